"""The edge's side of the certificate service: fetch the CA, then trade a CSR for a node certificate.

A few lines of HTTP/1.1 over asyncio streams rather than an HTTP library: EdgeCore calls this once a year
(rotation) and ``keadm join`` once, and neither should carry aiohttp's memory for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from pathlib import Path

MAX_RESPONSE_BYTES = 64 * 1024


class CertServiceError(Exception):
    """The certificate service refused, or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def pem_fingerprint(pem: bytes) -> str:
    """sha256 (hex) of a PEM certificate's DER, as join tokens pin it."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()


async def fetch_ca(host: str, port: int, *, expected_sha256: str, time_limit: float = 10.0) -> bytes:
    """``GET /ca.crt`` without verifying anything (we do not trust anyone yet), then keep the CA only if its
    sha256 is the one the join token pins."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the CA is checked against the token's hash below
    pem = await _request(host, port, ctx, "GET", "/ca.crt", time_limit=time_limit)
    try:
        found = pem_fingerprint(pem)
    except (ValueError, UnicodeDecodeError):
        raise CertServiceError(f"{host}:{port}/ca.crt did not return a PEM certificate") from None
    if found != expected_sha256:
        raise CertServiceError(
            f"the CA at {host}:{port} has sha256 {found}, but the token pins {expected_sha256}: "
            "wrong CloudCore, or someone in between"
        )
    return pem


async def request_certificate(
    host: str,
    port: int,
    *,
    node: str,
    csr_pem: bytes,
    ca_pem: bytes,
    token: str | None = None,
    client_cert: tuple[Path, Path] | None = None,
    time_limit: float = 10.0,
) -> bytes:
    """``POST /edge.crt`` over TLS verified against ``ca_pem``: with a join token, or (to renew) with the
    node's current certificate and key presented as the TLS client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    headers = {"NodeName": node, "Content-Type": "application/x-pem-file"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await _request(host, port, ctx, "POST", "/edge.crt", headers=headers, body=csr_pem, time_limit=time_limit)


async def _request(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    time_limit: float,
) -> bytes:
    where = f"https://{host}:{port}{path}"
    try:
        async with asyncio.timeout(time_limit):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
            try:
                lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
                lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
                lines.append(f"Content-Length: {len(body)}")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
                response = await reader.read(MAX_RESPONSE_BYTES + 1)
            finally:
                writer.close()
                # The server may close first (Connection: close); the response is read by then.
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        raise CertServiceError(f"{where}: no answer within {time_limit:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise CertServiceError(f"{where}: TLS verification failed: {exc.verify_message}") from None
    except (OSError, ssl.SSLError) as exc:
        raise CertServiceError(f"{where}: {exc.strerror or exc}") from None
    return _parse(where, response)


def _parse(where: str, response: bytes) -> bytes:
    if len(response) > MAX_RESPONSE_BYTES:
        raise CertServiceError(f"{where}: response larger than {MAX_RESPONSE_BYTES} bytes")
    head, sep, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise CertServiceError(f"{where}: not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    if b"transfer-encoding: chunked" in head.lower():  # the certificate service always sends a length
        raise CertServiceError(f"{where}: chunked responses are not expected from the certificate service")
    if status != 200:
        reason = body.decode(errors="replace").strip() or status_line
        raise CertServiceError(f"{where}: {status}: {reason}", status)
    return body
