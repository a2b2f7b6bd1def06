"""Where the API server is and how to prove who we are: from a kubeconfig file, or in-cluster.

Kept small and our own: the generated client that also reads kubeconfigs costs CloudCore 2.6 s of imports at
every start, and a restarted CloudCore's start is what a reconnecting fleet waits for (``reconnect.py``).

Supported, as kubectl reads them: the current context (or ``context``), a cluster's ``server``,
``certificate-authority`` / ``-data`` and ``insecure-skip-tls-verify``; a user's ``client-certificate`` /
``-data`` with ``client-key`` / ``-data``, ``token`` and ``tokenFile``. Relative paths are relative to the
kubeconfig's directory. ``exec`` and ``auth-provider`` plugins are refused by name. In-cluster: the service
account's token (re-read once a minute: bound tokens rotate) and CA, and ``KUBERNETES_SERVICE_HOST``/``_PORT``.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_S = 60.0


class KubeconfigError(ValueError):
    """The kubeconfig (or the in-cluster environment) cannot be used; the message says what is wrong."""


@dataclass
class Credentials:
    server: str  # https://host:port, no trailing slash
    ssl_context: ssl.SSLContext | None  # None: plain http (a local test server)
    ca_file: str = ""  # the CA that signs the API server's certificate, as a file (others need the path)
    token: str = ""
    token_file: str = ""  # re-read now and then: it rotates
    _token_read_at: float = field(default=0.0, repr=False)

    def authorization(self) -> str | None:
        """The Authorization header value, or None when the client certificate is the identity."""
        if self.token_file:
            now = time.monotonic()
            if not self.token or now - self._token_read_at > TOKEN_REREAD_S:
                self.token = Path(self.token_file).read_text().strip()
                self._token_read_at = now
        return f"Bearer {self.token}" if self.token else None


def _named(entries: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(what)
            if not isinstance(body, dict):
                raise KubeconfigError(f"{path}: {what} {name!r} has no {what} section")
            return body
    raise KubeconfigError(f"{path}: no {what} named {name!r}")


def _file_or_data(section: dict[str, Any], key: str, base: Path, temp_dir: Path, path: Path) -> str:
    """A file path for ``key`` (relative to the kubeconfig) or for ``key-data`` (written out, base64-decoded)."""
    data = section.get(f"{key}-data")
    if data:
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise KubeconfigError(f"{path}: {key}-data is not base64: {exc}") from None
        out = temp_dir / key
        out.write_bytes(raw)
        out.chmod(0o600)
        return str(out)
    value = section.get(key)
    if not value:
        return ""
    file = Path(value) if Path(value).is_absolute() else base / value
    if not file.is_file():
        raise KubeconfigError(f"{path}: {key} {file} does not exist")
    return str(file)


def _load(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeconfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path}: not YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig (expected a mapping)")
    return loaded


def from_kubeconfig(kubeconfig: str, context: str = "") -> Credentials:
    path = Path(kubeconfig)
    loaded = _load(path)
    name = context or loaded.get("current-context") or ""
    if not name:
        raise KubeconfigError(f"{path}: no current-context, and no context was named")
    ctx = _named(loaded.get("contexts"), name, "context", path)
    cluster = _named(loaded.get("clusters"), str(ctx.get("cluster", "")), "cluster", path)
    user = _named(loaded.get("users"), str(ctx.get("user", "")), "user", path) if ctx.get("user") else {}
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise KubeconfigError(f"{path}: user {ctx.get('user')!r} authenticates with {plugin}, not supported")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"{path}: cluster {ctx.get('cluster')!r} has no https:// server")
    base = path.resolve().parent
    temp_dir = Path(tempfile.mkdtemp(prefix="kubage-kubeconfig-"))
    ca_file = _file_or_data(cluster, "certificate-authority", base, temp_dir, path)
    cert_file = _file_or_data(user, "client-certificate", base, temp_dir, path)
    key_file = _file_or_data(user, "client-key", base, temp_dir, path)
    if bool(cert_file) != bool(key_file):
        raise KubeconfigError(f"{path}: user {ctx.get('user')!r} has a client certificate or key without the other")
    context_ssl = None
    if server.startswith("https://"):
        context_ssl = _ssl_context(ca_file, insecure=bool(cluster.get("insecure-skip-tls-verify")), path=path)
        if cert_file:
            try:
                context_ssl.load_cert_chain(cert_file, key_file)
            except (ssl.SSLError, OSError) as exc:
                raise KubeconfigError(f"{path}: client certificate {cert_file} cannot be used: {exc}") from None
    for written in (cert_file, key_file):  # loaded: a key written out from -data does not stay on disk
        if written.startswith(str(temp_dir)):
            Path(written).unlink()
    token_file = str(user.get("tokenFile") or "")
    if token_file and not Path(token_file).is_absolute():
        token_file = str(base / token_file)
    return Credentials(server, context_ssl, ca_file, token=str(user.get("token") or ""), token_file=token_file)


def in_cluster() -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeconfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    token, ca = SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt"
    for needed in (token, ca):
        if not needed.is_file():
            raise KubeconfigError(f"in-cluster: {needed} does not exist (no service account mounted?)")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Credentials(server, _ssl_context(str(ca), insecure=False, path=ca), str(ca), token_file=str(token))


def _ssl_context(ca_file: str, *, insecure: bool, path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise KubeconfigError(f"{path}: certificate authority {ca_file} cannot be used: {exc}") from None
    return context
