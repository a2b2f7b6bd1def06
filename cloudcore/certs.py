"""CloudCore's CA, kept in the Secret ``kubeedge/casecret`` (keys ``cadata`` and ``cakeydata``, as KubeEdge
names them), its serving certificates, and the TLS of the stream server and between replicas.

The CA is created exactly once, even when several replicas (or ``keadm init`` and a replica) start together:
each reads the Secret, and only when it is absent creates a CA and tries to *create* the Secret. The API server
lets one create win; the others get 409 Conflict and read the winner's CA. Nobody ever replaces the Secret,
so no replica can be left holding a CA the others do not (KubeEdge's #5922).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from cloudcore.kube import Conflict, Kube
from common.logging import get_logger
from common.pki import CertificateAuthority, new_key, write_pair

log = get_logger(__name__)

NAMESPACE = "kubeedge"
CA_SECRET = "casecret"  # noqa: S105 - a Secret's name, not a password
CA_COMMON_NAME = "kubage-ca"
CA_DAYS = 36500  # as KubeEdge: rotating the root means re-joining every node
PEER_CN_PREFIX = "kubage:cloudcore:"  # the CN of a CloudCore replica's peer certificate (streams between replicas)


async def ensure_namespace(kube: Kube, namespace: str = NAMESPACE) -> None:
    with contextlib.suppress(Conflict):  # it exists
        await kube.request(
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )


async def load_ca(kube: Kube, namespace: str = NAMESPACE) -> CertificateAuthority | None:
    """The CA in the Secret, or None when there is no Secret yet."""
    secret = await kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{CA_SECRET}")
    if secret is None:
        return None
    data = secret.get("data") or {}
    try:
        return CertificateAuthority.from_pem(base64.b64decode(data["cadata"]), base64.b64decode(data["cakeydata"]))
    except (KeyError, ValueError) as exc:
        raise CaSecretError(f"secret {namespace}/{CA_SECRET} does not hold a usable CA: {exc}") from None


async def ensure_ca(kube: Kube, namespace: str = NAMESPACE) -> CertificateAuthority:
    """The cluster's CA: read from the Secret, or created and stored there if this caller is first."""
    existing = await load_ca(kube, namespace)
    if existing is not None:
        return existing
    await ensure_namespace(kube, namespace)
    ca = CertificateAuthority.create(CA_COMMON_NAME, days=CA_DAYS)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CA_SECRET, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "kubage"}},
        "type": "Opaque",
        "data": {
            "cadata": base64.b64encode(ca.cert_pem).decode(),
            "cakeydata": base64.b64encode(ca.key_pem).decode(),
        },
    }
    try:
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body)
    except Conflict as exc:
        winner = await load_ca(kube, namespace)  # another replica created it first: use theirs
        if winner is None:
            raise CaSecretError(f"secret {namespace}/{CA_SECRET} conflicted on create but cannot be read") from exc
        log.info("ca_loaded", secret=f"{namespace}/{CA_SECRET}", created_by="another instance")
        return winner
    log.info("ca_created", secret=f"{namespace}/{CA_SECRET}", fingerprint=ca.fingerprint)
    return ca


class CaSecretError(Exception):
    pass


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Replicas may share a certificate directory: one at a time writes a key and its certificate there, so a
    pair is never half one replica's and half another's."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".kubage-certs.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def write_serving_cert(
    ca: CertificateAuthority, names: list[str], cert_file: Path, key_file: Path, *, only_if_missing: bool = False
) -> None:
    """A serving certificate for ``names`` (every address and DNS name edges dial), replacing the files whole;
    with ``only_if_missing``, only when no replica has written ``cert_file`` yet."""
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(key_file.parent):
        if only_if_missing and cert_file.exists():
            return
        key, cert = ca.issue_server(names, days=CA_DAYS)
        # A name of this process's own: two replicas writing at once once renamed each other's files away.
        written_cert, written_key = write_pair(key_file.parent, f".{key_file.name}.{os.getpid()}.new", key, cert)
        written_key.replace(key_file)
        written_cert.replace(cert_file)


def peer_client_context(
    ca: CertificateAuthority, name: str, server_ca_files: list[str], kubage_ca_pem: bytes
) -> ssl.SSLContext:
    """How a replica connects to another's stream server: a client certificate of its own (CN
    kubage:cloudcore:<name>), issued at start and held in memory only (replicas sharing a directory replaced
    each other's), and the other's certificate verified."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PEER_CN_PREFIX + name)])
    cert = ca.issue(subject, key.public_key(), days=CA_DAYS, client=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="kubage-peer-") as private:  # ssl loads a key from a file only
        cert_path, key_path = write_pair(Path(private), "peer", key, cert)
        ctx.load_cert_chain(str(cert_path), str(key_path))
    for ca_file in server_ca_files:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.load_verify_locations(cadata=kubage_ca_pem.decode())
    return ctx


def stream_server_context(
    cert_file: Path, key_file: Path, client_ca_files: list[str], kubage_ca_pem: bytes
) -> ssl.SSLContext:
    """The stream server's TLS: its certificate; client certificates from the API server's kubelet-client CA or
    (other replicas) the kubage CA are verified, none at all is left to the bearer token (else 401)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    for ca_file in client_ca_files:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.load_verify_locations(cadata=kubage_ca_pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
