"""``cloudcore.yaml``: the same layout and key names as KubeEdge's CloudCore configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from common.config import ConfigModel, load_config

ENV_PREFIX = "CLOUDCORE"
DEFAULT_CONFIG_PATH = Path("/etc/kubage/cloudcore.yaml")


class KubeAPIConfig(ConfigModel):
    kube_config: str = ""  # empty: in-cluster credentials
    master: str = ""
    qps: float = Field(default=100.0, gt=0)
    burst: int = Field(default=200, gt=0)


class WebSocketListener(ConfigModel):
    enable: bool = True
    address: str = "0.0.0.0"  # noqa: S104 - CloudCore serves edges on other machines
    port: int = Field(default=10000, ge=1, le=65535)


class HttpsListener(ConfigModel):
    """The certificate service: ``GET /ca.crt`` and node certificates in exchange for a join token."""

    enable: bool = True
    address: str = "0.0.0.0"  # noqa: S104
    port: int = Field(default=10002, ge=1, le=65535)


class CloudHub(ConfigModel):
    advertise_address: list[str] = Field(default_factory=list)
    dns_names: list[str] = Field(default_factory=list, alias="dnsNames")
    node_limit: int = Field(default=500, gt=0)
    keepalive_interval: float = Field(default=15.0, gt=0)  # KubeEdge: 30; a dead link is found sooner
    window: int = Field(default=64, ge=1, le=4096)  # reliable messages in flight per node (KubeEdge: 1)
    # With tlsCAFile present the CA comes from these files (and the certificate service needs tlsCAKeyFile
    # too); without it, from the Secret kubeedge/casecret, created on first start, and the serving certificate
    # is issued at each start for advertiseAddress, dnsNames and this host, into tlsCertFile/tlsPrivateKeyFile.
    tls_ca_file: str = Field(default="/etc/kubage/ca/rootCA.crt", alias="tlsCAFile")
    tls_ca_key_file: str = Field(default="/etc/kubage/ca/rootCA.key", alias="tlsCAKeyFile")
    tls_cert_file: str = "/etc/kubage/certs/server.crt"
    tls_private_key_file: str = "/etc/kubage/certs/server.key"
    edge_cert_signing_duration: float = Field(default=365.0, gt=0)  # days a node certificate is valid
    websocket: WebSocketListener = Field(default_factory=WebSocketListener)
    https: HttpsListener = Field(default_factory=HttpsListener)


class EdgeController(ConfigModel):
    enable: bool = True
    lease_renew_interval: float = Field(default=10.0, gt=0)  # a quarter of the 40 s node lease


class Modules(ConfigModel):
    cloud_hub: CloudHub = Field(default_factory=CloudHub)
    edge_controller: EdgeController = Field(default_factory=EdgeController)


class MonitorServer(ConfigModel):
    bind_address: str = "127.0.0.1:9091"  # Prometheus /metrics, /healthz, /readyz


class CommonConfig(ConfigModel):
    monitor_server: MonitorServer = Field(default_factory=MonitorServer)


class CloudCoreConfig(ConfigModel):
    common_config: CommonConfig = Field(default_factory=CommonConfig)
    kube_api_config: KubeAPIConfig = Field(default_factory=KubeAPIConfig, alias="kubeAPIConfig")
    modules: Modules = Field(default_factory=Modules)
    log_level: str = "info"


def load(path: Path | None) -> CloudCoreConfig:
    return load_config(CloudCoreConfig, path, env_prefix=ENV_PREFIX)


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
