"""A small HTTP endpoint for Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` (CloudCore and EdgeCore)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from common.logging import get_logger

log = get_logger(__name__)


class Monitor:
    def __init__(self, *, bind_address: str, collector: Collector, ready: Callable[[], bool]) -> None:
        host, _, port = bind_address.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._ready = ready
        self._registry = CollectorRegistry()
        self._registry.register(collector)
        self.port = 0

    async def run(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []  # aiohttp exposes no port getter
            self.port = sockets[0].getsockname()[1] if sockets else self._port
            log.info("monitor_listening", host=self._host, port=self.port)
            await asyncio.Future()
        finally:
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="not ready")
