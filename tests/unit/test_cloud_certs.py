"""CloudCore's own certificates when replicas share a directory (one volume mounted into every replica)."""

from __future__ import annotations

import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloudcore.certs import peer_client_context, write_serving_cert
from common.pki import CertificateAuthority

CA = CertificateAuthority.create("certs-test-ca")


def test_replicas_writing_one_serving_certificate_at_once_leave_a_matching_pair(tmp_path: Path) -> None:
    # Two replicas started together once renamed each other's temporary files away (FileNotFoundError in CI),
    # and could leave one's key beside the other's certificate.
    cert_file, key_file = tmp_path / "pki" / "stream.crt", tmp_path / "pki" / "stream.key"
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            for _ in range(20):
                write_serving_cert(CA, ["127.0.0.1"], cert_file, key_file)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert cert.public_key().public_bytes(der, public) == key.public_key().public_bytes(der, public)
    assert sorted(p.name for p in cert_file.parent.iterdir()) == [".kubage-certs.lock", "stream.crt", "stream.key"]


def test_only_if_missing_keeps_what_another_replica_wrote(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "stream.crt", tmp_path / "stream.key"
    write_serving_cert(CA, ["127.0.0.1"], cert_file, key_file)
    first = cert_file.read_bytes()
    write_serving_cert(CA, ["127.0.0.1"], cert_file, key_file, only_if_missing=True)
    assert cert_file.read_bytes() == first


def test_the_peer_certificate_is_held_in_memory_only() -> None:
    before = set(Path(tempfile.gettempdir()).glob("kubage-peer-*"))
    context = peer_client_context(CA, "replica-1", [], CA.cert_pem)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    # ssl reads the key from a file: the private directory it was written to is gone again
    assert set(Path(tempfile.gettempdir()).glob("kubage-peer-*")) == before
