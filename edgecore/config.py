"""``edgecore.yaml``: the same layout and key names as KubeEdge's EdgeCore configuration."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field

from common.config import ConfigModel, load_config

ENV_PREFIX = "EDGECORE"
DEFAULT_CONFIG_PATH = Path("/etc/kubage/edgecore.yaml")


class Database(ConfigModel):
    driver_name: str = "sqlite3"
    data_source: str = "/var/lib/kubage/edgecore.db"


class EdgeHubWebSocket(ConfigModel):
    enable: bool = True
    server: str = "127.0.0.1:10000"  # CloudCore's WebSocket endpoint, host:port
    handshake_timeout: float = Field(default=30.0, gt=0)
    read_deadline: float = Field(default=15.0, gt=0)
    write_deadline: float = Field(default=15.0, gt=0)


class EdgeHub(ConfigModel):
    enable: bool = True
    heartbeat: float = Field(default=15.0, gt=0)
    message_burst: int = Field(default=60, gt=0)
    message_qps: int = Field(default=30, gt=0, alias="messageQPS")
    project_id: str = Field(default="e632aba927ea4ac2b575ec1603d56f10", alias="projectID")
    tls_ca_file: str = Field(default="/etc/kubage/ca/rootCA.crt", alias="tlsCaFile")
    tls_cert_file: str = "/etc/kubage/certs/server.crt"
    tls_private_key_file: str = "/etc/kubage/certs/server.key"
    websocket: EdgeHubWebSocket = Field(default_factory=EdgeHubWebSocket)
    https_server: str = Field(default="https://127.0.0.1:10002", alias="httpServer")  # the certificate service
    rotate_certificates: bool = True  # renew the node certificate at a jittered 70-90 % of its lifetime


class Edged(ConfigModel):
    enable: bool = True
    hostname_override: str = Field(default_factory=socket.gethostname)  # the node's name
    node_ip: str = Field(default="", alias="nodeIP")  # empty: the address that routes to CloudCore
    node_labels: dict[str, str] = Field(default_factory=dict)
    node_status_update_frequency: float = Field(default=10.0, gt=0)
    remote_runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    root_directory: str = "/var/lib/kubage/edged"
    healthz_bind_address: str = "127.0.0.1:10248"  # /healthz, /readyz and Prometheus /metrics


class EventBus(ConfigModel):
    enable: bool = True
    mqtt_server_external: str = "tcp://127.0.0.1:1883"
    mqtt_qos: int = Field(default=1, ge=0, le=2, alias="mqttQOS")  # for the edge's subscriptions and replies


class Modules(ConfigModel):
    edge_hub: EdgeHub = Field(default_factory=EdgeHub)
    edged: Edged = Field(default_factory=Edged)
    event_bus: EventBus = Field(default_factory=EventBus)


class EdgeCoreConfig(ConfigModel):
    database: Database = Field(default_factory=Database)
    modules: Modules = Field(default_factory=Modules)
    log_level: str = "info"


def load(path: Path | None) -> EdgeCoreConfig:
    return load_config(EdgeCoreConfig, path, env_prefix=ENV_PREFIX)


def required_files(config: EdgeCoreConfig) -> list[tuple[str, str]]:
    """Files the configuration names, as (YAML key, path)."""
    hub = config.modules.edge_hub
    return [
        ("modules.edgeHub.tlsCaFile", hub.tls_ca_file),
        ("modules.edgeHub.tlsCertFile", hub.tls_cert_file),
        ("modules.edgeHub.tlsPrivateKeyFile", hub.tls_private_key_file),
    ]
