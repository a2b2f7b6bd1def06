"""CloudCore's modules, wired explicitly: informers → placement → CloudHub ← upstream; leases; monitoring."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from cloudcore.certs import (
    ensure_ca,
    peer_client_context,
    stream_server_context,
    write_serving_cert,
)
from cloudcore.certservice import CertService
from cloudcore.cloudhub import CloudHub, HubSettings
from cloudcore.cloudstream import Authorizer, SessionDirectory, StreamBroker, StreamServer, StreamSettings
from cloudcore.cloudstream.directory import ANNOTATION
from cloudcore.config import CloudCoreConfig, ca_from_files, kube_rate
from cloudcore.edgecontroller.autonomy import Autonomy
from cloudcore.edgecontroller.lease import LeaseRenewer
from cloudcore.edgecontroller.placement import EDGE_LABEL, Placement
from cloudcore.edgecontroller.upstream import RetryPolicy, Upstream
from cloudcore.globalmanager import GlobalManager, training
from cloudcore.globalmanager.pods import JOB_LABEL
from cloudcore.informer import Handler, Informer
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
        kubelet_port=config.common_config.tunnel_port if config.modules.cloud_stream.enable else None,
    )
    autonomy = Autonomy(kube, placement.nodes, placement.pods) if config.modules.edge_controller.pod_autonomy else None
    streams: StreamServer | None = None
    if config.modules.cloud_stream.enable:
        streams = stream_server(
            config, kube=kube, hub=hub, placement=placement, ca=ca, ca_pem=ca_pem, endpoint=stream_endpoint(config)
        )
    manager = (
        GlobalManager(kube, streams.request if streams else None, hub.send)
        if config.modules.global_manager.enable
        else None
    )
    hub.upstream.learning = manager.on_upstream if manager is not None else None

    def on_node(kind: str, node: dict[str, Any], before: dict[str, Any] | None) -> None:
        placement.on_node(kind, node, before)
        if autonomy is not None:
            autonomy.on_node(kind, node, before)

    def on_pod(kind: str, pod: dict[str, Any], before: dict[str, Any] | None) -> None:
        placement.on_pod(kind, pod, before)
        if autonomy is not None:
            autonomy.on_pod(kind, pod, before)
        if manager is not None:
            manager.on_pod(kind, pod, before)

    informers = [
        Informer(kube, "/api/v1/nodes", name="nodes", handler=on_node, query=[("labelSelector", EDGE_LABEL)]),
        Informer(kube, "/api/v1/pods", name="pods", handler=on_pod, query=[("fieldSelector", "spec.nodeName!=")]),
        Informer(kube, "/api/v1/configmaps", name="configmaps", handler=placement.on_configmap),
        Informer(kube, "/api/v1/secrets", name="secrets", handler=placement.on_secret),
        Informer(kube, "/apis/devices.kubeedge.io/v1beta1/devices", name="devices", handler=placement.on_device),
        Informer(
            kube,
            "/apis/devices.kubeedge.io/v1beta1/devicemodels",
            name="devicemodels",
            handler=placement.on_devicemodel,
        ),
        Informer(
            kube, "/apis/sedna.io/v1alpha1/datasets", name="datasets", handler=_both(placement.on_dataset, manager)
        ),
    ]
    # The jobs' own informers do not hold back CloudHub: an edge node's objects do not depend on them.
    learning = (
        [
            Informer(
                kube,
                "/apis/sedna.io/v1alpha1/federatedlearningjobs",
                name="federatedlearningjobs",
                handler=manager.on_job,
            ),
            Informer(kube, "/apis/sedna.io/v1alpha1/models", name="models", handler=manager.on_model),
            # Distributed jobs' trainers run as the Training Operator's PyTorchJobs (when its CRDs are installed)
            Informer(
                kube,
                f"/apis/{training.API_VERSION}/{training.PLURAL}",
                name=training.PLURAL,
                handler=manager.on_training_job,
                query=[("labelSelector", JOB_LABEL)],
            ),
        ]
        if manager is not None
        else []
    )
    serving = asyncio.Event()

    endpoint = stream_endpoint(config)
    lease = LeaseRenewer(
        kube=kube,
        hub=hub,
        interval=config.modules.edge_controller.lease_renew_interval,
        annotations={ANNOTATION: endpoint} if config.modules.cloud_stream.enable else {},
    )
    monitor = Monitor(
        bind_address=config.common_config.monitor_server.bind_address,
        collector=HubCollector(hub, [*informers, *learning], streams=streams, manager=manager, kube=kube),
        ready=serving.is_set,
    )
    modules = [
        *(Module(f"informer.{i.name}", i.run) for i in [*informers, *learning]),
        *([Module("globalmanager", lambda: _after_sync(manager.run, [*informers, *learning]))] if manager else []),
        Module("cloudhub", lambda: _serve_hub(hub, informers, serving), Restart.NEVER),
        Module("lease", lease.run),
        Module("monitor", monitor.run),
        *([Module("autonomy", autonomy.run)] if autonomy is not None else []),
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
            request_timeout=hub_config.https.request_timeout,
        )
        modules.append(Module("certservice", certs.run))
    if streams is not None:
        modules.append(Module("cloudstream", streams.run))
    return modules, kube.close


async def _serve_hub(hub: CloudHub, informers: Sequence[Informer], serving: asyncio.Event) -> None:
    """Listen at once, but start no session before every cache is synced: a session diffed against a partial
    desired set would delete what has simply not been listed yet. Edges that reconnect meanwhile (to a restarted
    CloudCore, say) wait, connected, rather than being refused and backing off further."""
    hub.hold_sessions()

    async def open_when_synced() -> None:
        await asyncio.gather(*(informer.synced.wait() for informer in informers))
        hub.open_sessions()
        serving.set()

    opener = asyncio.create_task(open_when_synced(), name="cloudhub.open")
    try:
        await hub.serve()
    finally:
        opener.cancel()
        serving.clear()


async def _after_sync(run: Callable[[], Awaitable[None]], informers: Sequence[Informer]) -> None:
    """The global manager judges a job by its pods, Datasets and Model: only once every cache is complete."""
    await asyncio.gather(*(informer.synced.wait() for informer in informers))
    await run()


def _both(placement_handler: Handler, manager: GlobalManager | None) -> Handler:
    """Datasets go to their node (placement) and to the global manager."""
    if manager is None:
        return placement_handler

    def handler(kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        placement_handler(kind, obj, before)
        manager.on_dataset(kind, obj, before)

    return handler


def stream_endpoint(config: CloudCoreConfig) -> str:
    """host:port at which the other replicas reach this one's stream server."""
    stream = config.modules.cloud_stream
    if stream.advertise_address:
        return stream.advertise_address
    host = next(iter(config.modules.cloud_hub.advertise_address), "127.0.0.1")
    return f"[{host}]:{stream.stream_port}" if ":" in host else f"{host}:{stream.stream_port}"


def stream_server(
    config: CloudCoreConfig,
    *,
    kube: Kube,
    hub: CloudHub,
    placement: Placement,
    ca: CertificateAuthority | None,
    ca_pem: bytes,
    endpoint: str,
) -> StreamServer:
    """The stream server with its TLS: its certificate (from files, or issued now from the kubage CA), the API
    server's kubelet-client CA, and this replica's peer certificate for reaching the others."""
    stream, hub_config = config.modules.cloud_stream, config.modules.cloud_hub
    cert_file, key_file = Path(stream.tls_stream_cert_file), Path(stream.tls_stream_private_key_file)
    if not cert_file.exists():
        if ca is None:
            raise StreamSetupError(
                f"modules.cloudStream.tlsStreamCertFile: {cert_file} does not exist, and without "
                "the CA's key (modules.cloudHub.tlsCAKeyFile) none can be issued"
            )
        names = [*hub_config.advertise_address, *hub_config.dns_names, socket.gethostname(), "localhost", "127.0.0.1"]
        write_serving_cert(ca, list(dict.fromkeys(names)), cert_file, key_file, only_if_missing=True)
    client_cas = [stream.tls_stream_ca_file] if stream.tls_stream_ca_file else [kube.ca_file]
    peer_context = None
    if ca is not None:
        peer_context = peer_client_context(ca, socket.gethostname(), client_cas, ca_pem)
    broker = StreamBroker(hub.send, dial_timeout=stream.dial_timeout, max_per_node=stream.max_streams_per_node)
    hub.stream_acceptor = broker.accept
    return StreamServer(
        settings=StreamSettings(host=stream.address, port=stream.stream_port),
        ssl_context=stream_server_context(cert_file, key_file, client_cas, ca_pem),
        peer_context=peer_context,
        kubage_ca=x509.load_pem_x509_certificate(ca_pem),
        hub=hub,
        broker=broker,
        placement=placement,
        authorizer=Authorizer(kube),
        directory=SessionDirectory(kube, endpoint=endpoint),
    )


class StreamSetupError(Exception):
    """The stream server cannot be set up with this configuration; the message names the key."""
