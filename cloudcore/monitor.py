"""CloudCore's metrics, read from the hub and the informers at scrape time: the hot paths keep plain
integer counters and pay nothing for metrics. Served by ``common.monitor.Monitor``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloudcore.cloudhub import CloudHub
from cloudcore.cloudstream import StreamServer
from cloudcore.globalmanager import GlobalManager
from cloudcore.informer import Informer
from cloudcore.kube import Kube


class HubCollector(Collector):
    def __init__(
        self,
        hub: CloudHub,
        informers: Sequence[Informer],
        *,
        streams: StreamServer | None = None,
        manager: GlobalManager | None = None,
        kube: Kube | None = None,
    ) -> None:
        self._kube = kube
        self._hub = hub
        self._informers = informers
        self._streams = streams
        self._manager = manager

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
        paced = CounterMetricFamily(
            "kubage_cloudhub_upstream_paced", "Edge messages that waited: the node was over its budget", labels=["node"]
        )
        dropped = CounterMetricFamily(
            "kubage_cloudhub_upstream_dropped",
            "Best-effort edge messages dropped: the node was over its budget",
            labels=["node"],
        )
        for node, count in sorted(self._hub.paced.items()):
            paced.add_metric([node], count)
        for node, count in sorted(self._hub.dropped.items()):
            dropped.add_metric([node], count)
        yield paced
        yield dropped
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
        if self._kube is not None:
            requests = CounterMetricFamily(
                "kubage_kube_requests", "Requests CloudCore sent the API server", labels=["verb", "resource"]
            )
            for (verb, resource), count in sorted(self._kube.requests.items()):
                requests.add_metric([verb, resource], count)
            yield requests
        if self._streams is not None:
            yield CounterMetricFamily(
                "kubage_cloudstream_forwarded",
                "Stream requests passed on to the replica holding the node's session",
                value=self._streams.forwarded,
            )
        if self._manager is not None:
            m = self._manager
            yield CounterMetricFamily(
                "kubage_globalmanager_relayed", "Federated updates and models carried between nodes", value=m.relayed
            )
            yield CounterMetricFamily(
                "kubage_globalmanager_relay_failures", "Transfers that could not be carried", value=m.relay_failures
            )
            yield CounterMetricFamily(
                "kubage_globalmanager_relayed_bytes", "Bytes of weights delivered to nodes", value=m.bytes_relayed
            )
