"""CloudCore's monitoring endpoint: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

Metrics are read from the hub and the informers at scrape time, so the hot paths keep plain integer
counters and pay nothing for metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloudcore.cloudhub import CloudHub
from cloudcore.informer import Informer
from common.logging import get_logger

log = get_logger(__name__)


class HubCollector(Collector):
    def __init__(self, hub: CloudHub, informers: Sequence[Informer]) -> None:
        self._hub = hub
        self._informers = informers

    def collect(self) -> Iterator[Metric]:
        nodes = sorted(self._hub.connected_nodes())
        yield GaugeMetricFamily(
            "kubage_cloudhub_connected_nodes", "Edge nodes with an established session", value=len(nodes)
        )
        pending = GaugeMetricFamily(
            "kubage_cloudhub_pending_objects", "Objects waiting to be sent, per node", labels=["node"]
        )
        inflight = GaugeMetricFamily(
            "kubage_cloudhub_inflight_messages", "Messages sent and not yet acked", labels=["node"]
        )
        for node in nodes:
            stats = self._hub.stats(node)
            if stats is not None:
                pending.add_metric([node], stats.pending)
                inflight.add_metric([node], stats.inflight)
        yield pending
        yield inflight
        totals = self._hub.totals()
        yield CounterMetricFamily("kubage_cloudhub_acked_messages", "Messages acked by edges", value=totals.acked)
        yield CounterMetricFamily(
            "kubage_cloudhub_retransmits", "Messages sent again after their deadline", value=totals.retransmits
        )
        yield CounterMetricFamily(
            "kubage_cloudhub_resync_objects", "Objects sent to bring reconnecting edges up to date", value=totals.resync
        )
        yield CounterMetricFamily("kubage_cloudhub_sessions", "Sessions established", value=totals.sessions)
        restarts = CounterMetricFamily(
            "kubage_watch_restarts", "Watches that failed and were restarted", labels=["resource"]
        )
        relists = CounterMetricFamily("kubage_watch_relists", "Relists after 410 Gone", labels=["resource"])
        for informer in self._informers:
            restarts.add_metric([informer.name], informer.watch_restarts)
            relists.add_metric([informer.name], informer.relists)
        yield restarts
        yield relists
        seen = GaugeMetricFamily(
            "kubage_watch_resource_version", "Newest resourceVersion each cache has seen", labels=["resource"]
        )
        for informer in self._informers:
            if informer.resource_version.isdigit():
                seen.add_metric([informer.name], int(informer.resource_version))
        yield seen


class Monitor:
    def __init__(
        self, *, bind_address: str, hub: CloudHub, informers: Sequence[Informer], ready: Callable[[], bool]
    ) -> None:
        host, _, port = bind_address.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._ready = ready
        self._registry = CollectorRegistry()
        self._registry.register(HubCollector(hub, informers))
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
            sockets = getattr(site._server, "sockets", None) or []
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
        return web.Response(status=503, text="caches not synced or hub not serving")
