"""EdgeCore's modules, wired explicitly: MetaStore ← EdgeHub → Edged, DeviceTwin ↔ EventBus, node status, health."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.fl import is_delivery
from common.logging import get_logger
from common.messages import Message, NodeName
from common.monitor import Monitor
from common.supervisor import Module, Restart
from common.systemd import notify, watchdog
from common.tls import client_context
from edgecore.certmanager import CertRotator, complete_interrupted_rotation
from edgecore.config import EdgeCoreConfig
from edgecore.config import Edged as EdgedConfig
from edgecore.config import EventBus as EventBusConfig
from edgecore.devicetwin import DeviceTwin
from edgecore.edged.edged import Edged
from edgecore.edged.events import EventRecorder
from edgecore.edged.network import DnsSettings, NetworkSettings, PodNetwork
from edgecore.edged.node import NodeReporter, host_ip_towards, node_status
from edgecore.edged.runtime import FullRuntime
from edgecore.edged.satokens import ServiceAccountTokens
from edgecore.edgehub import EdgeHub, EdgeHubSettings
from edgecore.edgehub.hub import MessageHandler
from edgecore.edgestream import EdgeStream
from edgecore.edgestream.kubelet import KubeletApi
from edgecore.eventbus import EventBus, EventBusSettings
from edgecore.localcontroller import LocalController
from edgecore.metamanager.store import MetaStore

log = get_logger(__name__)

RuntimeFactory = Callable[[str], FullRuntime]


class EdgeCollector(Collector):
    def __init__(self, hub: EdgeHub, edged: Edged | None) -> None:
        self._hub = hub
        self._edged = edged

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "kubage_edgehub_connected",
            "1 while the session with CloudCore is up",
            value=int(self._hub.connected.is_set()),
        )
        yield GaugeMetricFamily(
            "kubage_edgehub_outbox", "Upstream messages waiting for the cloud's ack", value=len(self._hub.outbox)
        )
        yield CounterMetricFamily(
            "kubage_edgehub_applied", "Cloud messages that changed the store", value=self._hub.applied
        )
        yield CounterMetricFamily("kubage_edgehub_sessions", "Sessions established", value=self._hub.sessions)
        if self._edged is None:
            return
        stats = self._edged.stats
        yield CounterMetricFamily(
            "kubage_edged_containers_started", "Containers started", value=stats.containers_started
        )
        yield CounterMetricFamily(
            "kubage_edged_pods_adopted", "Running pods adopted after a restart", value=stats.adopted
        )


async def build(
    config: EdgeCoreConfig, runtime_factory: RuntimeFactory
) -> tuple[Sequence[Module], Callable[[], Awaitable[None]]]:
    hub_config, edged_config = config.modules.edge_hub, config.modules.edged
    node = NodeName(edged_config.hostname_override)
    data_source = Path(config.database.data_source)
    data_source.parent.mkdir(parents=True, exist_ok=True)
    store = await MetaStore.open(data_source)
    cert_file, key_file = Path(hub_config.tls_cert_file), Path(hub_config.tls_private_key_file)
    complete_interrupted_rotation(cert_file, key_file)
    hub = EdgeHub(
        settings=EdgeHubSettings.from_config(hub_config, node),
        ssl_context=client_context(cert_file, key_file, hub_config.tls_ca_file),
        store=store,
    )
    cloud_host = hub_config.websocket.server.split(",")[0].rsplit(":", 1)[0].strip("[]")
    host_ip = edged_config.node_ip or host_ip_towards(cloud_host)
    # With Edged off (a device-only gateway) there is no runtime to talk to, and the node offers no room for
    # pods, so that no scheduler places any there.
    runtime = runtime_factory(edged_config.remote_runtime_endpoint) if edged_config.enable else None
    edged: Edged | None = None
    if runtime is not None:
        edged = _edged(edged_config, node=node, store=store, hub=hub, runtime=runtime, host_ip=host_ip)
    local_controller = _local_controller(config, node=node, store=store, hub=hub, host_ip=host_ip)
    stream: EdgeStream | None = None
    if runtime is not None and edged is not None and config.modules.edge_stream.enable:
        api = KubeletApi(
            node_name=node,
            store=store,
            runtime=runtime,
            log_root=Path(edged_config.root_directory) / "logs" / "pods",
            pod_statuses=edged.reported_status,
            bytes_per_s=config.modules.edge_stream.max_bytes_per_second,
            sedna=local_controller.serve_cloud if local_controller is not None else None,
        )
        stream = EdgeStream(api=api, dial=hub.dial, max_streams=config.modules.edge_stream.max_streams)
    hub.set_message_handler(_best_effort_router(stream, local_controller))

    async def current_status() -> dict[str, Any]:
        if runtime is None:
            return node_status(hostname=node, host_ip=host_ip, runtime_version="", max_pods=0)
        try:
            version = await runtime.version()
        except Exception:  # the node still reports; the runtime's absence shows in its version
            version = "unavailable"
        return node_status(hostname=node, host_ip=host_ip, runtime_version=version)

    reporter = NodeReporter(
        node_name=node,
        labels=edged_config.node_labels,
        status=current_status,
        publish=hub.publish,
        interval=edged_config.node_status_update_frequency,
    )
    hub.add_connection_listener(reporter.resend)
    monitor = Monitor(
        bind_address=edged_config.healthz_bind_address, collector=EdgeCollector(hub, edged), ready=lambda: True
    )

    async def systemd() -> None:
        notify("READY=1")
        log.info("edgecore_ready", node=node, server=hub_config.websocket.server, host_ip=host_ip)
        await watchdog()
        await asyncio.Future()  # nothing more to do; stopping is the supervisor's

    modules = [
        Module("edgehub", hub.run, Restart.NEVER),
        *([Module("edged", edged.run)] if edged is not None else []),
        *([Module("edgestream", stream.run)] if stream is not None else []),
        *([Module("localcontroller", local_controller.run)] if local_controller is not None else []),
        Module("node", reporter.run),
        Module("monitor", monitor.run),
        Module("systemd", systemd),
    ]
    if hub_config.rotate_certificates:
        rotator = CertRotator(
            node=node,
            cert_file=cert_file,
            key_file=key_file,
            ca_file=Path(hub_config.tls_ca_file),
            https_server=hub_config.https_server,
            ssl_context=hub.ssl_context,
        )
        modules.append(Module("certrotation", rotator.run))
    closing: list[MetaStore] = []
    if config.modules.event_bus.enable:
        twin_store = await MetaStore.open(data_source)
        closing.append(twin_store)
        modules[1:1] = _device_modules(config.modules.event_bus, node, twin_store, hub)

    async def close() -> None:
        notify("STOPPING=1")
        if runtime is not None:
            await runtime.close()
        for extra in closing:
            await extra.close()
        await store.close()

    return modules, close


def _best_effort_router(stream: EdgeStream | None, local_controller: LocalController | None) -> MessageHandler:
    """The cloud's best-effort messages: weights delivered inline go to the local controller, the rest (stream
    requests, and what nothing here asked for) to EdgeStream, which logs what it does not handle."""

    async def route(message: Message) -> None:
        if local_controller is not None and is_delivery(message):
            await local_controller.on_message(message)
        elif stream is not None:
            await stream.on_message(message)
        else:
            log.info("cloud_message_unhandled", operation=message.route.operation, resource=message.route.resource)

    return route


def _local_controller(
    config: EdgeCoreConfig, *, node: NodeName, store: MetaStore, hub: EdgeHub, host_ip: str
) -> LocalController | None:
    """Sedna's local controller, listening to the hub's changes for this node's Datasets; none on a node
    without Edged, where no worker pod can run."""
    lc = config.modules.local_controller
    if not lc.enable or not config.modules.edged.enable:
        return None
    controller = LocalController(
        node=node,
        root=Path(lc.root_directory),
        store=store,
        publish=hub.publish,
        host=lc.bind_address or host_ip,
        port=lc.port,
        max_body=lc.max_body_bytes,
        check_seconds=lc.dataset_check_seconds,
    )
    hub.add_change_listener(controller.wake)
    return controller


def _edged(
    edged_config: EdgedConfig, *, node: NodeName, store: MetaStore, hub: EdgeHub, runtime: FullRuntime, host_ip: str
) -> Edged:
    """Edged with its token source, events, pod network and DNS, listening to the hub's changes."""
    root = Path(edged_config.root_directory)
    root.mkdir(parents=True, exist_ok=True)
    tokens = ServiceAccountTokens(store, hub.request)
    events = (
        EventRecorder(
            node=node,
            publish=hub.publish,
            pending=lambda: hub.pending("event/"),
            backlog=edged_config.event_backlog,
        )
        if edged_config.report_event
        else None
    )

    async def node_cidr() -> str:
        found = await store.get("node", None, node)
        return str(((found or {}).get("spec") or {}).get("podCIDR") or "")

    network = PodNetwork(network_settings(edged_config, root), runtime, node_cidr)
    edged = Edged(
        node_name=node,
        store=store,
        runtime=runtime,
        root=root,
        publish=hub.publish,
        host_ip=host_ip,
        sync_interval=edged_config.sync_frequency,
        restart_backoff=edged_config.restart_backoff,
        tokens=tokens.token,
        forget_tokens=tokens.forget,
        network=network,
        dns=DnsSettings(
            cluster_dns=tuple(edged_config.cluster_dns),
            cluster_domain=edged_config.cluster_domain,
            resolv_conf=Path(edged_config.resolv_conf),
        ),
        events=events,
        kubernetes_service=edged_config.kubernetes_service,
        allowed_unsafe_sysctls=frozenset(edged_config.allowed_unsafe_sysctls),
    )
    hub.add_change_listener(edged.on_changes)
    hub.add_connection_listener(edged.resend_statuses)
    return edged


def network_settings(edged: EdgedConfig, root: Path) -> NetworkSettings:
    return NetworkSettings(
        mode=edged.network,
        cni_conf_dir=Path(edged.cni_conf_dir),
        pod_cidr=edged.pod_cidr,
        bridge_name=edged.bridge_name,
        masquerade=edged.masquerade,
        ipam_dir=root / "cni" / "networks",
    )


def _device_modules(bus_config: EventBusConfig, node: NodeName, twin_store: MetaStore, hub: EdgeHub) -> list[Module]:
    """EventBus and DeviceTwin. The MQTT broker may come and go: the bus retries quietly and /readyz does not
    wait for it. DeviceTwin has its own connection to the store's file: statements interleaved with the store's
    open write transaction on one connection made COMMIT fail ("SQL statements in progress")."""
    bus = EventBus(EventBusSettings.from_config(bus_config))
    twin = DeviceTwin(
        node_name=node,
        store=twin_store,
        publish_upstream=hub.publish,
        publish_local=bus.publish,
        max_pending=bus_config.max_incoming,  # the bus hands each message over as it arrives: the twin holds them
    )
    bus.set_handler(twin.submit)
    bus.add_connection_listener(twin.on_bus_connection)
    hub.add_change_listener(twin.on_changes)
    return [Module("eventbus", bus.run), Module("devicetwin", twin.run)]
