"""CloudCore's CA, kept in the Secret ``kubeedge/casecret`` (keys ``cadata`` and ``cakeydata``, as KubeEdge
names them), and its serving certificate.

The CA is created exactly once, even when several replicas (or ``keadm init`` and a replica) start together:
each reads the Secret, and only when it is absent creates a CA and tries to *create* the Secret. The API server
lets one create win; the others get 409 Conflict and read the winner's CA. Nobody ever replaces the Secret,
so no replica can be left holding a CA the others do not (KubeEdge's #5922).
"""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

from cloudcore.kube import Conflict, Kube
from common.logging import get_logger
from common.pki import CertificateAuthority, write_pair

log = get_logger(__name__)

NAMESPACE = "kubeedge"
CA_SECRET = "casecret"  # noqa: S105 - a Secret's name, not a password
CA_COMMON_NAME = "kubage-ca"
CA_DAYS = 36500  # as KubeEdge: rotating the root means re-joining every node


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


def write_serving_cert(ca: CertificateAuthority, names: list[str], cert_file: Path, key_file: Path) -> None:
    """A serving certificate for ``names`` (every address and DNS name edges dial), replacing the files whole."""
    key, cert = ca.issue_server(names, days=CA_DAYS)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    written_cert, written_key = write_pair(key_file.parent, f".{key_file.name}.new", key, cert)
    written_key.replace(key_file)
    written_cert.replace(cert_file)
