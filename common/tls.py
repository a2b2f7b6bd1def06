"""TLS contexts for the hub tunnel (mutual TLS) and the node identity a client certificate carries."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

# A node's client certificate says CN=system:node:<name>, as Kubernetes's node certificates do. (Here, not in
# common.pki, so that EdgeCore does not load the cryptography package just for this string.)
NODE_CN_PREFIX = "system:node:"
# A node name is a DNS-1123 subdomain, as Kubernetes requires of Node names.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class IdentityError(Exception):
    """The peer's certificate does not name a node; the message says what it names instead."""


def server_context(
    cert_file: Path | str,
    key_file: Path | str,
    ca_file: Path | str | None = None,
    *,
    ca_pem: bytes | None = None,
    client_cert: ssl.VerifyMode = ssl.CERT_REQUIRED,
) -> ssl.SSLContext:
    """CloudHub's side: present our certificate and require a client certificate signed by our CA (given as
    a file or as PEM). The certificate service asks for one but does not require it (``CERT_OPTIONAL``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem.decode())
    else:
        ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = client_cert
    return ctx


def client_context(cert_file: Path | str, key_file: Path | str, ca_file: Path | str) -> ssl.SSLContext:
    """EdgeHub's side: trust only our CA, check the server's name, present the node certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def node_name_from_peercert(peercert: dict[str, Any] | None) -> str:
    """The node a verified client certificate belongs to: its subject must be ``CN=system:node:<name>``."""
    if not peercert:
        raise IdentityError("no client certificate")
    common_names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(common_names) != 1:
        raise IdentityError(f"certificate has {len(common_names)} common names, expected one")
    cn = str(common_names[0])
    if not cn.startswith(NODE_CN_PREFIX):
        raise IdentityError(f"certificate CN={cn!r} is not {NODE_CN_PREFIX}<node name>")
    node = cn[len(NODE_CN_PREFIX) :]
    if not valid_node_name(node):
        raise IdentityError(f"certificate names node {node!r}, which is not a valid node name")
    return node


def valid_node_name(name: str) -> bool:
    return len(name) <= 253 and _NODE_NAME.match(name) is not None
