"""Keys and certificates: ECDSA P-256, as KubeEdge uses. One small toolkit for every certificate we issue.

Node client certificates carry ``CN=system:node:<name>``: CloudHub takes the node's identity from it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.tls import NODE_CN_PREFIX

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CsrError(ValueError):
    """A certificate signing request that cannot be used; the message says why."""


@dataclass(frozen=True)
class CertificateAuthority:
    key: PrivateKey
    cert: x509.Certificate

    @classmethod
    def from_pem(cls, cert: bytes, key: bytes) -> CertificateAuthority:
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"CA key is {type(loaded).__name__}, expected an ECDSA key")  # noqa: TRY004 - bad input
        ca = cls(loaded, x509.load_pem_x509_certificate(cert))
        if ca.cert.public_key() != loaded.public_key():
            raise ValueError("CA key does not belong to the CA certificate")
        return ca

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def fingerprint(self) -> str:
        """sha256 of the CA certificate's DER, in hex: what a join token pins (as KubeEdge's does)."""
        return ca_fingerprint(self.cert)

    @classmethod
    def create(cls, common_name: str, *, days: int = 3650) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            _builder(name, name, key, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        days: float = 365,
        server_names: list[str] | None = None,
        client: bool = False,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Sign a leaf certificate. ``server_names`` (IPs or DNS names) make it a serving certificate."""
        usages = []
        builder = _builder(subject, self.cert.subject, public_key, days, not_before).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(server_names)), critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_node(self, node: str, *, days: int = 365) -> tuple[PrivateKey, x509.Certificate]:
        key = new_key()
        return key, self.issue(node_subject(node), key.public_key(), days=days, client=True)

    def sign_node_csr(self, csr_pem: bytes, node: str, *, days: float = 365) -> x509.Certificate:
        """A client certificate for ``node`` with the CSR's public key. The subject is set here from the
        node name the caller vouches for; the CSR's own subject and extensions are ignored, never copied."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrError(f"not a PEM certificate signing request: {exc}") from None
        if not csr.is_signature_valid:
            raise CsrError("the CSR's signature does not match its public key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise CsrError("the CSR's key must be ECDSA P-256")
        # Backdated a little for clock skew, but never by more than a tenth of the lifetime: a short-lived
        # certificate must still be rotated at 70-90 % of a lifetime that starts about now.
        skew = min(dt.timedelta(minutes=5), dt.timedelta(days=days) / 10)
        start = dt.datetime.now(dt.UTC) - skew
        return self.issue(node_subject(node), public, days=days, client=True, not_before=start)

    def issue_server(self, names: list[str], *, days: int = 365) -> tuple[PrivateKey, x509.Certificate]:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "server")])
        return key, self.issue(subject, key.public_key(), days=days, server_names=names)


def ca_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_csr(key: PrivateKey, node: str) -> bytes:
    """A PEM CSR for ``node``'s certificate, as the edge sends it (the server sets the subject anyway)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(node_subject(node)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def check_node_certificate(cert_pem_data: bytes, key: PrivateKey, ca_pem: bytes, node: str) -> x509.Certificate:
    """A certificate the certificate service returned: for our key and our node, signed by our CA.
    Raises ValueError saying what is wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem_data)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a certificate from our CA: {exc}") from None
    if cert.public_key() != key.public_key():
        raise ValueError("it is not for the key we sent")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [NODE_CN_PREFIX + node]:
        raise ValueError(f"it names {names}, not {NODE_CN_PREFIX}{node}")
    return cert


def node_subject(node: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, NODE_CN_PREFIX + node),
        ]
    )


def write_pair(directory: Path, stem: str, key: PrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    """Write ``<stem>.crt`` and ``<stem>.key`` (mode 600); returns (cert path, key path)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key_or_public: PrivateKey | ec.EllipticCurvePublicKey,
    days: float,
    not_before: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    public = key_or_public.public_key() if isinstance(key_or_public, ec.EllipticCurvePrivateKey) else key_or_public
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - dt.timedelta(minutes=5)  # tolerate small clock skew
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out
