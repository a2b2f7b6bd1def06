"""Certificate rotation, as KubeEdge's edge does it: at a jittered 70-90 % of the certificate's lifetime, a new
key and CSR go to the certificate service, authenticated by the current certificate.

The new pair is loaded into the same ``ssl.SSLContext`` EdgeHub connects with: the session in progress goes
on (its certificate was checked at its handshake), and the next connection presents the new one. Nothing is
dropped. On disk the pair is written as ``<file>.new`` and renamed key first, then certificate; a crash in
between is finished by ``complete_interrupted_rotation`` at the next start, so the key and certificate on
disk always belong together.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from common.certclient import CertServiceError, request_certificate
from common.logging import get_logger
from common.protocol.backoff import backoff_delays

log = get_logger(__name__)


def complete_interrupted_rotation(cert_file: Path, key_file: Path) -> None:
    new_cert, new_key_file = _staged(cert_file), _staged(key_file)
    if new_cert.exists() and not new_key_file.exists():
        os.replace(new_cert, cert_file)  # the key was already renamed: the certificate must follow it
        log.warning("certificate_rotation_completed", cert=str(cert_file))
    elif new_cert.exists():
        new_cert.unlink()  # nothing renamed yet: the old pair stands, the next rotation starts afresh
        new_key_file.unlink()


def validity(cert_file: Path) -> tuple[float, float]:
    """NotBefore and NotAfter of a PEM certificate, as Unix times, read by the ssl module.

    ``ssl._ssl._test_decode_cert`` is private but has decoded certificate files for CPython's own tests since
    Python 3.2; the cryptography package would do the same for about 10 MiB of resident memory, kept for good.
    """
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:  # a Python without it: pay for cryptography
        from cryptography import x509  # noqa: PLC0415

        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    decoded = decode(str(cert_file))
    return float(ssl.cert_time_to_seconds(decoded["notBefore"])), float(ssl.cert_time_to_seconds(decoded["notAfter"]))


def _staged(path: Path) -> Path:
    return path.with_name(path.name + ".new")


class CertRotator:
    def __init__(
        self,
        *,
        node: str,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        https_server: str,
        ssl_context: ssl.SSLContext,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.node = node
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        url = urlsplit(https_server)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"httpServer must be https://HOST:PORT, got {https_server!r}")
        self.host, self.port = url.hostname, url.port or 10002
        self.ssl_context = ssl_context
        self._rng = rng
        self.rotations = 0

    def deadline(self) -> float:
        """When to renew (Unix time): NotBefore plus 70-90 % of the lifetime."""
        start, end = validity(self.cert_file)
        return start + (end - start) * (0.7 + 0.2 * self._rng())

    async def run(self) -> None:
        while True:
            deadline = self.deadline()
            wait = max(0.0, deadline - time.time())
            log.info("certificate_rotation_scheduled", in_s=round(wait, 1))
            await asyncio.sleep(wait)
            delays = backoff_delays(initial=2.0, cap=32.0)  # KubeEdge: 2 s doubling, then every 32 s
            while True:
                try:
                    await self.rotate()
                    break
                except (CertServiceError, OSError, ValueError) as exc:
                    delay = next(delays)
                    log.warning("certificate_rotation_failed", error=str(exc), retry_in_s=round(delay, 1))
                    await asyncio.sleep(delay)

    async def rotate(self) -> None:
        # Imported on first use: the cryptography package costs EdgeCore about 10 MiB, for a yearly renewal.
        from common.pki import check_node_certificate, key_pem, new_csr, new_key  # noqa: PLC0415

        key = new_key()
        ca_pem = self.ca_file.read_bytes()
        cert_pem = await request_certificate(
            self.host,
            self.port,
            node=self.node,
            csr_pem=new_csr(key, self.node),
            ca_pem=ca_pem,
            client_cert=(self.cert_file, self.key_file),
        )
        cert = check_node_certificate(cert_pem, key, ca_pem, self.node)
        staged_key, staged_cert = _staged(self.key_file), _staged(self.cert_file)
        staged_key.touch(mode=0o600)
        staged_key.write_bytes(key_pem(key))
        staged_cert.write_bytes(cert_pem)
        os.replace(staged_key, self.key_file)
        os.replace(staged_cert, self.cert_file)
        self.ssl_context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self.rotations += 1
        log.info(
            "certificate_rotated", not_after=cert.not_valid_after_utc.isoformat(), serial=f"{cert.serial_number:x}"
        )
