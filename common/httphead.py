"""HTTP/1.1 request heads, as the stream server and the edge read, check and pass them on.

Only the head is parsed (request line and headers, bounded in size and time); whatever follows it (a body, or
the upgraded connection of exec and port-forward) is passed on untouched, so no streaming protocol is
reimplemented. ``response`` writes the few plain responses the stream path produces itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, urlsplit

MAX_HEAD_BYTES = 64 * 1024
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HeadError(ValueError):
    """Not an HTTP/1.x request head we accept; ``status`` is what to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # path and query, as sent
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str) -> str:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), "")

    def with_target(self, target: str) -> RequestHead:
        return replace(self, target=target)

    def with_header(self, name: str, value: str) -> RequestHead:
        lowered = name.lower()
        kept = [(k, v) for k, v in self.headers if k.lower() != lowered]
        return replace(self, headers=[*kept, (name, value)])

    def without_header(self, name: str) -> RequestHead:
        lowered = name.lower()
        return replace(self, headers=[(k, v) for k, v in self.headers if k.lower() != lowered])

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}", *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse(data: bytes) -> RequestHead:
    """A request head (everything before the blank line, which ``data`` may or may not include)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise HeadError(400, str(exc)) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(400, f"not an HTTP/1.1 request line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HeadError(400, f"malformed header line: {line[:100]!r}")
        headers.append((name, value.strip()))
    return RequestHead(parts[0], parts[1], parts[2], headers)


async def read_head(reader: asyncio.StreamReader, *, timeout: float) -> RequestHead:  # noqa: ASYNC109
    """The request head; what follows it stays in ``reader``. The reader's limit bounds the head's size."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HeadError(431, f"request head larger than {MAX_HEAD_BYTES} bytes") from None
    except asyncio.IncompleteReadError:
        raise HeadError(400, "connection closed before the request head ended") from None
    except TimeoutError:
        raise HeadError(408, f"no complete request head within {timeout:g} s") from None
    return parse(raw)


def response(
    status: int,
    body: str | bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A complete response that closes the connection after it."""
    data = body.encode() if isinstance(body, str) else body
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + data


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), "")


def parse_response(data: bytes) -> ResponseHead:
    """A response head (everything before the blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HeadError(502, f"not an HTTP/1.1 status line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, colon, value = line.partition(":")
        if not colon:
            raise HeadError(502, f"malformed header line in a response: {line[:100]!r}")
        headers.append((name.strip(), value.strip()))
    return ResponseHead(int(parts[1]), headers)


def streaming_response_head(content_type: str = "text/plain; charset=utf-8") -> bytes:
    """The head of a 200 whose body runs until the connection closes (a followed log)."""
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n".encode()
