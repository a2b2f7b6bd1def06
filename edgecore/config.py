"""``edgecore.yaml``: the same layout and key names as KubeEdge's EdgeCore configuration.

Every key here does something; KubeEdge keys that kubage does not support are refused at load with the reason
(``UNSUPPORTED``). Each component builds its runtime settings from its section in one function
(``EdgeHubSettings.from_config``, ``EventBusSettings.from_config``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from common.config import ConfigModel, Field, load_config, must_be_true
from common.nodelabels import forbidden_labels

ENV_PREFIX = "EDGECORE"
DEFAULT_CONFIG_PATH = Path("/etc/kubage/edgecore.yaml")
API_VERSION: Literal["edgecore.config.kubeedge.io/v1alpha2"] = "edgecore.config.kubeedge.io/v1alpha2"

_NOT_HERE = ""  # nothing more to say: kubage has no such part
_STREAMS = "streams go to the CloudCore of modules.edgeHub, with its certificate and timeouts"
_OUTBOX = "the outbox sends only each object's latest value, modules.edgeHub.window at a time"
UNSUPPORTED = {
    "modules.edgeHub.quic": "EdgeCore connects over WebSocket only (modules.edgeHub.websocket)",
    "modules.edgeHub.token": "keadm join exchanges the token for the node certificate; it is not kept",
    "modules.edgeHub.messageQPS": _OUTBOX,
    "modules.edgeHub.messageBurst": _OUTBOX,
    "modules.edged.tailoredKubeletConfig": "Edged is not a kubelet and takes no kubelet configuration",
    "modules.edged.tailoredKubeletFlag": "Edged is not a kubelet and takes no kubelet flags",
    "modules.edged.registerNodeNamespace": "the node registers cluster-scoped, as Kubernetes nodes are",
    "modules.edged.customInterfaceName": "set modules.edged.nodeIP instead",
    "modules.eventBus.mqttServerInternal": "EdgeCore runs no broker of its own (mqttMode 2 only)",
    "modules.eventBus.mqttRetain": "replies and deltas are never retained",
    "modules.eventBus.mqttSessionQueueSize": "the broker's own queue applies",
    "modules.eventBus.eventBusTLS": "TLS to the broker is not supported yet",
    "modules.metaManager": "the store is always on; its file is database.dataSource",
    "modules.deviceTwin": "device twins are always on with modules.eventBus",
    "modules.serviceBus": _NOT_HERE,
    "modules.dbTest": _NOT_HERE,
    "modules.edgeStream.server": _STREAMS,
    "modules.edgeStream.handshakeTimeout": _STREAMS,
    "modules.edgeStream.readDeadline": _STREAMS,
    "modules.edgeStream.writeDeadline": _STREAMS,
    "modules.edgeStream.tlsTunnelCAFile": _STREAMS,
    "modules.edgeStream.tlsTunnelCertFile": _STREAMS,
    "modules.edgeStream.tlsTunnelPrivateKeyFile": _STREAMS,
    "modules.taskManager": _NOT_HERE,
    "featureGates": "kubage has no feature gates",
    "edgecoreVersion": "EdgeCore reports its version itself",
}


class Database(ConfigModel):
    driver_name: Literal["sqlite3"] = "sqlite3"
    """The store's database: sqlite3, the only one."""
    data_source: str = "/var/lib/kubage/edgecore.db"
    """The SQLite file holding what the cloud sent, the outbox and the device twins."""


class EdgeHubWebSocket(ConfigModel):
    enable: bool = Field(default=True, check=must_be_true("it is how EdgeCore reaches CloudCore"))
    """Must be true: the WebSocket is how EdgeCore reaches CloudCore."""
    server: str = "127.0.0.1:10000"
    """CloudCore's host:port; several, comma-separated, are tried in turn (CloudCore replicas)."""
    server_hostname: str = ""
    """Name to check CloudCore's certificate against; empty: the host in server."""
    handshake_timeout: float = Field(default=30.0, gt=0)
    """Seconds the TLS and WebSocket handshake may take."""
    read_deadline: float | None = Field(default=None, gt=0)
    """Seconds without hearing from CloudCore before the link is closed; null: 2.5 times heartbeat.
    Keep it above CloudCore's keepaliveInterval."""
    write_deadline: float = Field(default=15.0, gt=0)
    """Seconds one frame to CloudCore may take to send before the link is given up."""
    close_timeout: float = Field(default=2.0, gt=0)
    """Seconds a closing link waits for CloudCore's close frame."""


class EdgeHub(ConfigModel):
    enable: bool = Field(default=True, check=must_be_true("EdgeHub is EdgeCore's link to the cloud"))
    """Must be true: EdgeHub is EdgeCore's link to the cloud."""
    heartbeat: float = Field(default=15.0, gt=0)
    """Seconds without sending before a keepalive goes to CloudCore."""
    window: int = Field(default=64, ge=1, le=4096)
    """Upstream messages (statuses, twin reports) in flight, unacknowledged."""
    batching: bool = True
    """Ask CloudCore for several messages per frame."""
    max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    """Largest frame accepted from CloudCore."""
    project_id: str = Field(default="e632aba927ea4ac2b575ec1603d56f10", alias="projectID")
    """The project in the URL dialled, as KubeEdge's EdgeHub sends it."""
    tls_ca_file: str = Field(default="/etc/kubage/ca/rootCA.crt", alias="tlsCaFile")
    """The CA that signed CloudCore's and this node's certificates (keadm join pins and writes it)."""
    tls_cert_file: str = "/etc/kubage/certs/server.crt"
    """This node's certificate (CN system:node:<name>)."""
    tls_private_key_file: str = "/etc/kubage/certs/server.key"
    """This node's key."""
    websocket: EdgeHubWebSocket = Field(default_factory=EdgeHubWebSocket)
    """The connection to CloudCore."""
    https_server: str = Field(default="https://127.0.0.1:10002", alias="httpServer")
    """CloudCore's certificate service, for renewals."""
    rotate_certificates: bool = True
    """Renew the node certificate at a jittered 70-90 % of its lifetime."""

    def check(self) -> None:
        deadline = self.websocket.read_deadline
        if deadline is not None and deadline <= self.heartbeat:
            raise ValueError(
                f"websocket.readDeadline ({deadline:g} s) must be longer than heartbeat ({self.heartbeat:g} s), "
                "or the link is closed between two keepalives"
            )


class Edged(ConfigModel):
    enable: bool = True
    """Run the node's pods; false makes a device-only gateway that offers no room for pods."""
    hostname_override: str = Field(default_factory=socket.gethostname)
    """The node's name."""
    node_ip: str = Field(default="", alias="nodeIP")
    """The node's InternalIP; empty: the local address that routes to CloudCore."""
    node_labels: dict[str, str] = Field(default_factory=dict)
    """Labels the node registers with; kubernetes.io/ and k8s.io/ ones only as a kubelet may set them."""
    node_status_update_frequency: float = Field(default=10.0, gt=0)
    """Seconds between checks of the node's status; a change is reported at once, the same status each minute."""
    sync_frequency: float = Field(default=2.0, gt=0)
    """Seconds between two passes that bring the runtime in line with the node's pods when nothing changed."""
    restart_backoff: float = Field(default=10.0, gt=0)
    """Seconds before the second restart of a crashing container, doubling up to 5 minutes (CrashLoopBackOff)."""
    remote_runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    """The CRI endpoint (containerd)."""
    root_directory: str = "/var/lib/kubage/edged"
    """Where pods' volumes and logs are written."""
    healthz_bind_address: str = "127.0.0.1:10248"
    """host:port of /healthz, /readyz and Prometheus /metrics."""
    network: Literal["bridge", "existing", "none"] = "bridge"
    """Pod networking: bridge writes a bridge CNI configuration when the runtime has none; existing waits for the
    operator's CNI; none runs hostNetwork pods only."""
    cni_conf_dir: str = Field(default="/etc/cni/net.d", alias="cniConfDir")
    """The runtime's CNI configuration directory (containerd's plugins.cri.cni.conf_dir), where bridge writes."""
    pod_cidr: str = Field(default="", alias="podCIDR")
    """The pods' subnet for network bridge; empty: the node's spec.podCIDR, as the controller-manager allocates."""
    bridge_name: str = Field(default="kubage0", max_length=15)
    """The Linux bridge of network bridge."""
    masquerade: bool = True
    """With network bridge, pods reach beyond the node through the node's address (the bridge plugin's ipMasq)."""
    cluster_dns: list[str] = Field(default_factory=list, alias="clusterDNS")
    """Name servers of dnsPolicy ClusterFirst; empty: such pods use the node's resolv.conf, as the kubelet does."""
    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain, for ClusterFirst search paths and hostname.subdomain names."""
    resolv_conf: str = "/etc/resolv.conf"
    """The node's resolver file, for dnsPolicy Default."""
    kubernetes_service: str = ""
    """host:port where edge pods reach the API server: set as KUBERNETES_SERVICE_HOST/PORT in every container, as
    the kubelet does for the kubernetes Service (whose ClusterIP needs a kube-proxy the edge does not run);
    empty: not set."""
    report_event: bool = True
    """Send the kubelet's events (Pulled, Started, Killing, BackOff, ...) up to the cluster."""
    event_backlog: int = Field(default=1000, ge=1)
    """Events waiting for the cloud at most while offline; newer ones are dropped and counted."""
    allowed_unsafe_sysctls: list[str] = Field(default_factory=list)
    """Sysctls outside the kubelet's safe set that pods may set (names, or prefixes ending in ``*``, e.g.
    ``kernel.msg*``); a pod asking for any other is rejected with SysctlForbidden, as by the kubelet."""

    def check(self) -> None:
        forbidden = forbidden_labels(self.hostname_override, self.node_labels)
        if forbidden:  # CloudCore would refuse the registration: say so here, at start
            raise ValueError(f"nodeLabels: a node may not set {', '.join(forbidden)}")


class EventBus(ConfigModel):
    enable: bool = True
    """Connect to the MQTT broker for devices (DeviceTwin and mappers)."""
    mqtt_mode: Literal[2] = Field(default=2, alias="mqttMode")
    """2: an external broker, the only mode (KubeEdge's 0 and 1 run a broker inside EdgeCore)."""
    mqtt_server_external: str = "tcp://127.0.0.1:1883"
    """The broker, tcp://host:port."""
    mqtt_qos: int = Field(default=1, ge=0, le=2, alias="mqttQOS")
    """QoS of the edge's subscriptions and replies."""
    client_id: str = Field(default="", alias="clientID")
    """MQTT client id; empty: edgecore-<random>, so two clients never take over each other's session."""
    keepalive: int = Field(default=30, gt=0)
    """Seconds of MQTT keepalive; a silent broker is given up after 1.5 of these."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds connecting and subscribing may take."""
    window: int = Field(default=100, ge=1)
    """QoS 1 publishes in flight."""
    max_queued: int = Field(default=10_000, ge=1)
    """Publishes waiting for the broker; the oldest is dropped and counted beyond this."""
    max_wait: float = Field(default=10.0, gt=0)
    """Seconds a publish may wait for the broker before it is dropped and counted."""
    max_incoming: int = Field(default=10_000, ge=1)
    """Received messages held before DeviceTwin takes them; beyond this they are dropped and counted."""


class EdgeStream(ConfigModel):
    enable: bool = True
    """Serve CloudCore's stream requests: kubectl logs, exec, attach, port-forward and the node proxy."""
    max_streams: int = Field(default=32, ge=1)
    """Streams served at once at most; one more is answered 429."""
    max_bytes_per_second: float = Field(default=16.0 * 1024 * 1024, ge=0)
    """Pace of each exec, attach and port-forward stream, each way (0: none), so that a bulk copy leaves the
    gateway's CPU and link to the object sync; 16 MiB/s is 134 Mbit/s, above most edge links."""


class LocalController(ConfigModel):
    enable: bool = True
    """Sedna's local controller: the endpoint the learning lib in this node's pods talks to, and the data
    loader that brings the node's Datasets here."""
    bind_address: str = ""
    """Where the endpoint listens; empty: the node's InternalIP (``modules.edged.nodeIP``), which the worker
    pods (host network, as Sedna runs them) reach as ``status.hostIP``."""
    port: int = Field(default=9100, ge=0, le=65535)
    """Sedna's LC port."""
    root_directory: str = "/var/lib/kubage/sedna"
    """Datasets and the weights in transit live here."""
    max_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """The largest model update or dataset a request may carry."""
    dataset_check_seconds: float = Field(default=60.0, gt=0)
    """How often a loaded Dataset's url is checked for changes (Sedna's LC: every 60 s)."""


class Modules(ConfigModel):
    edge_hub: EdgeHub = Field(default_factory=EdgeHub)
    """The link to CloudCore."""
    edged: Edged = Field(default_factory=Edged)
    """The node and its pods."""
    event_bus: EventBus = Field(default_factory=EventBus)
    """MQTT, for devices."""
    edge_stream: EdgeStream = Field(default_factory=EdgeStream)
    """kubectl logs, exec, attach, port-forward and the node proxy for this node."""
    local_controller: LocalController = Field(default_factory=LocalController)
    """Federated learning on this node (Sedna's LC)."""


class EdgeCoreConfig(ConfigModel):
    api_version: Literal["edgecore.config.kubeedge.io/v1alpha2"] = API_VERSION
    """The file's format, as KubeEdge's."""
    kind: Literal["EdgeCore"] = "EdgeCore"
    """Which component the file configures; a CloudCore file is refused here."""
    database: Database = Field(default_factory=Database)
    """EdgeCore's store."""
    modules: Modules = Field(default_factory=Modules)
    """EdgeCore's modules."""
    log_level: str = "info"
    """debug, info, warning or error."""


def load(path: Path | None) -> EdgeCoreConfig:
    return load_config(EdgeCoreConfig, path, env_prefix=ENV_PREFIX, unsupported=UNSUPPORTED)


def required_files(config: EdgeCoreConfig) -> list[tuple[str, str]]:
    """Files the configuration names, as (YAML key, path)."""
    hub = config.modules.edge_hub
    return [
        ("modules.edgeHub.tlsCaFile", hub.tls_ca_file),
        ("modules.edgeHub.tlsCertFile", hub.tls_cert_file),
        ("modules.edgeHub.tlsPrivateKeyFile", hub.tls_private_key_file),
    ]
