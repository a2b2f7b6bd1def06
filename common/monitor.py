"""A tiny HTTP endpoint for Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` (CloudCore and EdgeCore).

Plain asyncio rather than a web framework: three GET routes do not justify ~10 MiB of aiohttp in every
EdgeCore (benchmarks/edge_footprint.py). One request per connection, bounded request size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from common.logging import get_logger

log = get_logger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


class Monitor:
    def __init__(self, *, bind_address: str, collector: Collector, ready: Callable[[], bool]) -> None:
        host, _, port = bind_address.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._ready = ready
        self._registry = CollectorRegistry()
        self._registry.register(collector)
        self.port = 0

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_REQUEST_BYTES)
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("monitor_listening", host=self._host, port=self.port)
            await server.serve_forever()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self._registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok"
        if path == "/readyz":
            return (200, "text/plain", b"ok") if self._ready() else (503, "text/plain", b"not ready")
        return 404, "text/plain", b"not found"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = (
                self._answer(path.split("?", 1)[0]) if method == "GET" else (405, "text/plain", b"method not allowed")
            )
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a slow, oversized or broken request gets no answer; the server carries on
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
