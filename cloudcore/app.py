"""CloudCore's modules, wired explicitly: informers → placement → CloudHub ← upstream; leases; monitoring."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from cloudcore.cloudhub import CloudHub, HubSettings
from cloudcore.config import CloudCoreConfig
from cloudcore.edgecontroller.lease import LeaseRenewer
from cloudcore.edgecontroller.placement import EDGE_LABEL, Placement
from cloudcore.edgecontroller.upstream import Upstream
from cloudcore.informer import Informer
from cloudcore.kube import Kube
from cloudcore.monitor import HubCollector
from common.hublink import now_ms
from common.logging import get_logger
from common.monitor import Monitor
from common.supervisor import Module, Restart
from common.tls import server_context

log = get_logger(__name__)


async def build(config: CloudCoreConfig) -> tuple[Sequence[Module], Callable[[], Awaitable[None]]]:
    hub_config = config.modules.cloud_hub
    kube = await Kube.connect(config.kube_api_config.kube_config)
    hub = CloudHub(
        ssl_context=server_context(hub_config.tls_cert_file, hub_config.tls_private_key_file, hub_config.tls_ca_file),
        settings=HubSettings(
            host=hub_config.websocket.address,
            port=hub_config.websocket.port,
            node_limit=hub_config.node_limit,
            window=hub_config.window,
            keepalive_interval=hub_config.keepalive_interval,
        ),
    )
    placement = Placement(hub)
    hub.upstream = Upstream(kube=kube, hub=hub, placement=placement, now_ms=now_ms)
    informers = [
        Informer(kube, "/api/v1/nodes", name="nodes", handler=placement.on_node, query=[("labelSelector", EDGE_LABEL)]),
        Informer(
            kube, "/api/v1/pods", name="pods", handler=placement.on_pod, query=[("fieldSelector", "spec.nodeName!=")]
        ),
        Informer(kube, "/api/v1/configmaps", name="configmaps", handler=placement.on_configmap),
        Informer(kube, "/api/v1/secrets", name="secrets", handler=placement.on_secret),
        Informer(kube, "/apis/devices.kubeedge.io/v1beta1/devices", name="devices", handler=placement.on_device),
        Informer(
            kube,
            "/apis/devices.kubeedge.io/v1beta1/devicemodels",
            name="devicemodels",
            handler=placement.on_devicemodel,
        ),
    ]
    serving = asyncio.Event()

    async def run_hub() -> None:
        # Serving before every cache is synced would diff edges against a partial desired set and delete
        # what has simply not been listed yet.
        await asyncio.gather(*(informer.synced.wait() for informer in informers))
        serving.set()
        try:
            await hub.serve()
        finally:
            serving.clear()

    lease = LeaseRenewer(kube=kube, hub=hub, interval=config.modules.edge_controller.lease_renew_interval)
    monitor = Monitor(
        bind_address=config.common_config.monitor_server.bind_address,
        collector=HubCollector(hub, informers),
        ready=serving.is_set,
    )
    modules = [
        *(Module(f"informer.{i.name}", i.run) for i in informers),
        Module("cloudhub", run_hub, Restart.NEVER),
        Module("lease", lease.run),
        Module("monitor", monitor.run),
    ]
    return modules, kube.close
