"""CloudCore's modules, wired explicitly: informers → placement → CloudHub ← upstream; leases; monitoring."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from cloudcore.certs import ensure_ca, write_serving_cert
from cloudcore.certservice import CertService
from cloudcore.cloudhub import CloudHub, HubSettings
from cloudcore.config import CloudCoreConfig, ca_from_files, kube_rate
from cloudcore.edgecontroller.lease import LeaseRenewer
from cloudcore.edgecontroller.placement import EDGE_LABEL, Placement
from cloudcore.edgecontroller.upstream import RetryPolicy, Upstream
from cloudcore.informer import Informer
from cloudcore.kube import Kube
from cloudcore.monitor import HubCollector
from common.hublink import now_ms
from common.logging import get_logger
from common.monitor import Monitor
from common.pki import CertificateAuthority
from common.supervisor import Module, Restart
from common.tls import server_context

log = get_logger(__name__)


async def load_pki(config: CloudCoreConfig, kube: Kube) -> tuple[CertificateAuthority | None, bytes]:
    """The CA (None when only its certificate is at hand: the certificate service is then off) and its PEM.

    From files when tlsCAFile exists; otherwise from the cluster's Secret (created by the first instance to
    start), with a serving certificate issued for this start."""
    hub = config.modules.cloud_hub
    if ca_from_files(config):
        return _pki_from_files(config)
    ca = await ensure_ca(kube)
    names = [*hub.advertise_address, *hub.dns_names, socket.gethostname(), "localhost", "127.0.0.1"]
    write_serving_cert(ca, list(dict.fromkeys(names)), Path(hub.tls_cert_file), Path(hub.tls_private_key_file))
    log.info("serving_certificate_issued", names=list(dict.fromkeys(names)), ca=ca.fingerprint)
    return ca, ca.cert_pem


def _pki_from_files(config: CloudCoreConfig) -> tuple[CertificateAuthority | None, bytes]:
    hub = config.modules.cloud_hub
    ca_pem = Path(hub.tls_ca_file).read_bytes()
    key_file = Path(hub.tls_ca_key_file)
    if not key_file.exists():
        log.warning("certservice_off", reason=f"no CA key at {key_file}: edges cannot join or renew here")
        return None, ca_pem
    return CertificateAuthority.from_pem(ca_pem, key_file.read_bytes()), ca_pem


async def build(config: CloudCoreConfig) -> tuple[Sequence[Module], Callable[[], Awaitable[None]]]:
    hub_config = config.modules.cloud_hub
    qps, burst = kube_rate(config)
    kube = await Kube.connect(
        config.kube_api_config.kube_config, master=config.kube_api_config.master, qps=qps, burst=burst
    )
    try:
        ca, ca_pem = await load_pki(config, kube)
    except BaseException:
        await kube.close()
        raise
    hub = CloudHub(
        ssl_context=server_context(hub_config.tls_cert_file, hub_config.tls_private_key_file, ca_pem=ca_pem),
        settings=HubSettings.from_config(hub_config),
    )
    placement = Placement(hub)
    hub.upstream = Upstream(
        kube=kube,
        hub=hub,
        placement=placement,
        now_ms=now_ms,
        retry=RetryPolicy.from_config(config.modules.edge_controller),
    )
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
    if ca is not None and hub_config.https.enable:
        certs = CertService(
            ca=ca,
            kube=kube,
            ssl_context=server_context(
                hub_config.tls_cert_file, hub_config.tls_private_key_file, ca_pem=ca_pem, client_cert=ssl.CERT_OPTIONAL
            ),
            host=hub_config.https.address,
            port=hub_config.https.port,
            signing_days=hub_config.edge_cert_signing_duration,
        )
        modules.append(Module("certservice", certs.run))
    return modules, kube.close
