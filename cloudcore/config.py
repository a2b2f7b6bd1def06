"""``cloudcore.yaml``: the same layout and key names as KubeEdge's CloudCore configuration.

Every key here does something; KubeEdge keys that kubage does not support are refused at load with the reason
(``UNSUPPORTED``). Each component builds its runtime settings from its section in one function
(``HubSettings.from_config``, ``RetryPolicy.from_config``, ``kube_rate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from common.config import ConfigModel, Field, load_config, must_be_true

ENV_PREFIX = "CLOUDCORE"
DEFAULT_CONFIG_PATH = Path("/etc/kubage/cloudcore.yaml")
API_VERSION: Literal["cloudcore.config.kubeedge.io/v1alpha1"] = "cloudcore.config.kubeedge.io/v1alpha1"

_NOT_HERE = ""  # nothing more to say: kubage has no such part
_STREAMS = "edges open streams on CloudHub's port (modules.cloudHub.websocket), with their node certificates"
UNSUPPORTED = {
    "kubeAPIConfig.contentType": "kubage talks JSON to the API server",
    "modules.cloudHub.quic": "edges connect over WebSocket only (modules.cloudHub.websocket)",
    "modules.cloudHub.unixsocket": "kubage has no CSI driver socket",
    "modules.cloudHub.tokenRefreshDuration": "join tokens are issued on demand by `keadm gettoken --ttl`",
    "modules.cloudHub.authorization": "node authorization is always on: a node's identity is its certificate",
    "modules.edgeController.buffer": "queues are per node and coalesce by object",
    "modules.edgeController.load": "queues are per node and coalesce by object",
    "modules.edgeController.nodeUpdateFrequency": "node status is written as the edge reports it",
    "modules.deviceController": "devices are sent down and their status written by the edge controller",
    "modules.syncController": "edges resync from their inventory on connect; there are no ObjectSync records",
    "modules.dynamicController": _NOT_HERE,
    "modules.cloudStream.tunnelPort": _STREAMS,
    "modules.cloudStream.tlsTunnelCAFile": _STREAMS,
    "modules.cloudStream.tlsTunnelCertFile": _STREAMS,
    "modules.cloudStream.tlsTunnelPrivateKeyFile": _STREAMS,
    "modules.router": _NOT_HERE,
    "modules.iptablesManager": _NOT_HERE,
    "modules.taskManager": _NOT_HERE,
    "modules.nodeUpgradeJobController": _NOT_HERE,
    "modules.policyController": _NOT_HERE,
    "featureGates": "kubage has no feature gates",
}


class KubeAPIConfig(ConfigModel):
    kube_config: str = ""
    """Kubeconfig file for the API server; empty: the pod's in-cluster service account."""
    master: str = ""
    """API server URL, replacing the one in the kubeconfig (or the in-cluster one); empty: keep it."""
    qps: float | None = Field(default=None, gt=0)
    """Requests per second to the API server, on average; null: 5 times nodeLimit, as KubeEdge sets it."""
    burst: int | None = Field(default=None, gt=0)
    """Requests allowed at once above qps; null: 10 times nodeLimit, as KubeEdge sets it."""


class WebSocketListener(ConfigModel):
    enable: bool = Field(default=True, check=must_be_true("edges connect only through this listener"))
    """Must be true: the WebSocket listener is how edges connect."""
    address: str = "0.0.0.0"  # noqa: S104 - CloudCore serves edges on other machines
    """Address to listen on for edges."""
    port: int = Field(default=10000, ge=1, le=65535)
    """Port to listen on for edges (KubeEdge's 10000)."""


class HttpsListener(ConfigModel):
    enable: bool = True
    """Serve the certificate service: GET /ca.crt, and node certificates in exchange for a join token."""
    address: str = "0.0.0.0"  # noqa: S104
    """Address the certificate service listens on."""
    port: int = Field(default=10002, ge=1, le=65535)
    """Port of the certificate service (KubeEdge's 10002)."""
    request_timeout: float = Field(default=10.0, gt=0)
    """Seconds a client has for each of the TLS handshake, the request head and the CSR; then it is dropped."""


class CloudHub(ConfigModel):
    enable: bool = Field(default=True, check=must_be_true("edges connect to CloudHub"))
    """Must be true: CloudHub is what edges connect to."""
    advertise_address: list[str] = Field(default_factory=list)
    """Addresses edges reach CloudCore at; they go into the serving certificate."""
    dns_names: list[str] = Field(default_factory=list, alias="dnsNames")
    """Host names edges reach CloudCore by; they go into the serving certificate."""
    node_limit: int = Field(default=500, gt=0)
    """Edges connected at once at most; one more is refused with close code 1013 (try again later)."""
    keepalive_interval: float = Field(default=15.0, gt=0)
    """Seconds without sending before a keepalive goes to an edge (KubeEdge: 30; a dead link is found sooner)."""
    read_timeout: float | None = Field(default=None, gt=0)
    """Seconds without hearing from an edge before its link is closed; null: 2.5 times keepaliveInterval."""
    write_timeout: float = Field(default=30.0, gt=0)
    """Seconds one frame to an edge may take to send before the link is given up (a peer that stopped reading)."""
    window: int = Field(default=64, ge=1, le=4096)
    """Reliable messages in flight per node, unacknowledged (KubeEdge: 1)."""
    max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    """Largest frame accepted from an edge; a larger one closes its link with 1009."""
    batching: bool = True
    """Let edges that ask for it receive several messages in one frame."""
    close_timeout: float = Field(default=2.0, gt=0)
    """Seconds a closing link waits for the edge's close frame."""
    shutdown_timeout: float = Field(default=5.0, gt=0)
    """Seconds a stopping CloudCore waits for its edges' links to close."""
    max_hello_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest first frame (the hello, with the edge's inventory) accepted, checked before it is decoded (1009)."""
    max_inventory: int = Field(default=10_000, ge=1)
    """Entries of a hello's inventory at most (1009); each key and value at most 256 characters (1008)."""
    max_batch: int = Field(default=4096, ge=1)
    """Messages in one frame from an edge at most; more closes its link with 1007."""
    upstream_rate: float = Field(default=1000.0, gt=0)
    """Messages a second one node may send on average: beyond it, its reliable messages wait (TCP pushes back on
    that node alone) and its best-effort ones are dropped and counted."""
    upstream_burst: int = Field(default=5000, ge=1)
    """Messages one node may send at once above upstreamRate."""
    tls_ca_file: str = Field(default="/etc/kubage/ca/rootCA.crt", alias="tlsCAFile")
    """The CA certificate. When this file exists, the CA comes from files; otherwise from the Secret
    kubeedge/casecret (created on first start), with a serving certificate issued at each start."""
    tls_ca_key_file: str = Field(default="/etc/kubage/ca/rootCA.key", alias="tlsCAKeyFile")
    """The CA's key, with tlsCAFile present; without it the certificate service is off."""
    tls_cert_file: str = "/etc/kubage/certs/server.crt"
    """CloudCore's serving certificate (written at start when the CA comes from the Secret)."""
    tls_private_key_file: str = "/etc/kubage/certs/server.key"
    """CloudCore's serving key (written at start when the CA comes from the Secret)."""
    edge_cert_signing_duration: float = Field(default=365.0, gt=0)
    """Days a node certificate is valid."""
    websocket: WebSocketListener = Field(default_factory=WebSocketListener)
    """Where edges connect."""
    https: HttpsListener = Field(default_factory=HttpsListener)
    """The certificate service edges join and renew through."""


class EdgeController(ConfigModel):
    enable: bool = Field(default=True, check=must_be_true("it is what sends each node its objects"))
    """Must be true: the edge controller is what sends each node its objects."""
    lease_renew_interval: float = Field(default=10.0, gt=0)
    """Seconds between renewals of a connected node's Lease (a quarter of its 40 s duration)."""
    upstream_attempts: int = Field(default=6, ge=1)
    """Tries of one edge message while the API server fails it in a way that may pass (5xx, 429, no answer)."""
    upstream_max_backoff: float = Field(default=5.0, gt=0)
    """Longest wait, in seconds, between two tries of one edge message."""
    pod_autonomy: bool = True
    """Pods on edge nodes tolerate the not-ready and unreachable taints for ever, so a disconnected edge's pods
    are not evicted; a pod annotated edge.kubage.io/autonomy: "false" is evicted as in any cluster."""


class CloudStream(ConfigModel):
    enable: bool = True
    """Serve kubectl logs, exec, attach, port-forward and the node proxy for edge nodes."""
    address: str = "0.0.0.0"  # noqa: S104 - the API server connects from another machine
    """Address the stream server listens on."""
    stream_port: int = Field(default=10003, ge=1, le=65535)
    """Port the stream server listens on: the API server's requests to edge nodes' kubelet port arrive here."""
    advertise_address: str = ""
    """host:port other CloudCore replicas reach this one's stream server at; empty: the first of
    modules.cloudHub.advertiseAddress (else 127.0.0.1) with streamPort."""
    tls_stream_ca_file: str = Field(default="", alias="tlsStreamCAFile")
    """CA of the API server's kubelet client certificate; empty: the cluster's CA (in-cluster, or the
    kubeconfig's). A client certificate from any other CA is refused at TLS."""
    tls_stream_cert_file: str = Field(default="/etc/kubage/certs/stream.crt", alias="tlsStreamCertFile")
    """The stream server's certificate; when the file is absent, one is issued at start from the kubage CA."""
    tls_stream_private_key_file: str = Field(default="/etc/kubage/certs/stream.key", alias="tlsStreamPrivateKeyFile")
    """The stream server's key (written with the certificate when that is issued at start)."""
    max_streams_per_node: int = Field(default=16, ge=1)
    """Streams open to one node at once at most; one more is refused with 429."""
    dial_timeout: float = Field(default=10.0, gt=0)
    """Seconds an edge has to open a stream once asked; then the request fails (502)."""


class GlobalManager(ConfigModel):
    enable: bool = True
    """Run Sedna's global manager: FederatedLearningJobs (sedna.io/v1alpha1, installed by keadm init), their
    pods and status, and the weights between their nodes (which needs modules.cloudStream)."""


class Modules(ConfigModel):
    cloud_hub: CloudHub = Field(default_factory=CloudHub)
    """The WebSocket server edges connect to, and the certificate service."""
    edge_controller: EdgeController = Field(default_factory=EdgeController)
    """Which objects each node holds, and what edges report up."""
    cloud_stream: CloudStream = Field(default_factory=CloudStream)
    """kubectl logs, exec, attach, port-forward and the node proxy, through the tunnel."""
    global_manager: GlobalManager = Field(default_factory=GlobalManager)
    """Federated learning jobs across edge nodes (Sedna's GM)."""


class MonitorServer(ConfigModel):
    bind_address: str = "127.0.0.1:9091"
    """host:port of Prometheus /metrics, /healthz and /readyz."""


class CommonConfig(ConfigModel):
    monitor_server: MonitorServer = Field(default_factory=MonitorServer)
    """Metrics and health endpoints."""
    tunnel_port: int = Field(default=10350, ge=1, le=65535)
    """The kubelet port edge nodes advertise (status.daemonEndpoints.kubeletEndpoint); the API server's
    requests to <node address>:tunnelPort must reach modules.cloudStream's streamPort (see the README)."""


class CloudCoreConfig(ConfigModel):
    api_version: Literal["cloudcore.config.kubeedge.io/v1alpha1"] = API_VERSION
    """The file's format, as KubeEdge's."""
    kind: Literal["CloudCore"] = "CloudCore"
    """Which component the file configures; an EdgeCore file is refused here."""
    common_config: CommonConfig = Field(default_factory=CommonConfig)
    """Settings of the process as a whole."""
    kube_api_config: KubeAPIConfig = Field(default_factory=KubeAPIConfig, alias="kubeAPIConfig")
    """How CloudCore reaches the Kubernetes API server."""
    modules: Modules = Field(default_factory=Modules)
    """CloudCore's modules."""
    log_level: str = "info"
    """debug, info, warning or error."""


def load(path: Path | None) -> CloudCoreConfig:
    return load_config(CloudCoreConfig, path, env_prefix=ENV_PREFIX, unsupported=UNSUPPORTED)


def kube_rate(config: CloudCoreConfig) -> tuple[float, int]:
    """(qps, burst) for the API client: as configured, or scaled with nodeLimit as KubeEdge does."""
    api, node_limit = config.kube_api_config, config.modules.cloud_hub.node_limit
    return (
        api.qps if api.qps is not None else 5.0 * node_limit,
        api.burst if api.burst is not None else 10 * node_limit,
    )


def ca_from_files(config: CloudCoreConfig) -> bool:
    """Whether the CA comes from files (tlsCAFile exists) rather than the cluster's Secret."""
    return Path(config.modules.cloud_hub.tls_ca_file).exists()


def required_files(config: CloudCoreConfig) -> list[tuple[str, str]]:
    """Files the configuration names, as (YAML key, path)."""
    hub = config.modules.cloud_hub
    files = [("kubeAPIConfig.kubeConfig", config.kube_api_config.kube_config)]
    if ca_from_files(config):
        files += [
            ("modules.cloudHub.tlsCertFile", hub.tls_cert_file),
            ("modules.cloudHub.tlsPrivateKeyFile", hub.tls_private_key_file),
        ]
    return files
