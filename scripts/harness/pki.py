"""A throwaway PKI: a CA, a server certificate for loopback, and node certificates on demand."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from common.pki import CertificateAuthority, cert_pem, write_pair
from common.tls import client_context, server_context


@dataclass
class Pki:
    directory: Path
    ca: CertificateAuthority = field(default_factory=lambda: CertificateAuthority.create("kubage-test-ca"))

    def __post_init__(self) -> None:
        self.ca_file = self.directory / "ca.crt"
        self.ca_key_file = self.directory / "ca.key"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(cert_pem(self.ca.cert))
        self.ca_key_file.write_bytes(self.ca.key_pem)
        self.ca_key_file.chmod(0o600)
        key, cert = self.ca.issue_server(["127.0.0.1", "localhost"])
        self.server_cert, self.server_key = write_pair(self.directory, "server", key, cert)

    @property
    def server_files(self) -> tuple[str, str, str]:
        """``server_context``'s arguments as strings, for a child process to build its own context from."""
        return str(self.server_cert), str(self.server_key), str(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.server_cert, self.server_key, self.ca_file)

    def node_files(self, node: str) -> tuple[Path, Path]:
        """A client certificate for ``node`` (CN=system:node:<node>): its cert and key paths."""
        key, cert = self.ca.issue_node(node)
        return write_pair(self.directory, f"node-{node}", key, cert)

    def node_context(self, node: str) -> ssl.SSLContext:
        cert_path, key_path = self.node_files(node)
        return client_context(cert_path, key_path, self.ca_file)
