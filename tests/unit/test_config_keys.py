"""No config key that does nothing: each one either reaches the component it configures, or is refused at load
with a message that names it (KubeEdge keys kubage does not support say why)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudcore import config as cloud_config
from cloudcore.cloudhub import HubSettings
from cloudcore.edgecontroller.upstream import RetryPolicy
from common.config import ConfigError, ConfigModel, descriptions, dump, fields_of, to_yaml
from common.messages import NodeName
from edgecore import app as edge_app
from edgecore import config as edge_config
from edgecore.edged.node import node_status
from edgecore.edged.runtime import FullRuntime
from edgecore.edgehub import EdgeHubSettings
from edgecore.eventbus import EventBusSettings
from scripts.harness.pki import Pki


def load_cloud(tmp_path: Path, text: str) -> cloud_config.CloudCoreConfig:
    path = tmp_path / "cloudcore.yaml"
    path.write_text(text)
    return cloud_config.load(path)


def load_edge(tmp_path: Path, text: str) -> edge_config.EdgeCoreConfig:
    path = tmp_path / "edgecore.yaml"
    path.write_text(text)
    return edge_config.load(path)


def keys_of(model: type[ConfigModel], where: str = "") -> list[tuple[str, type[ConfigModel], str]]:
    """Every key under ``model``: (dotted YAML key, its section, its attribute)."""
    found = []
    for info in fields_of(model):
        key = f"{where}{info.key}"
        found.append((key, model, info.name))
        if info.section is not None:
            found += keys_of(info.section, key + ".")
    return found


@pytest.mark.parametrize("model", [cloud_config.CloudCoreConfig, edge_config.EdgeCoreConfig])
def test_every_key_has_a_description_and_the_commented_defaults_load_back(
    model: type[ConfigModel], tmp_path: Path
) -> None:
    undocumented = [key for key, section, name in keys_of(model) if name not in descriptions(section)]
    assert undocumented == []
    text = to_yaml(model())
    assert "# Edges connected at once at most" in text or "# The link to CloudCore." in text
    path = tmp_path / "defaults.yaml"
    path.write_text(text)
    loader = cloud_config.load if model is cloud_config.CloudCoreConfig else edge_config.load
    assert loader(path) == model()
    assert yaml.safe_load(text) == dump(model())


# --- cloudcore.yaml ------------------------------------------------------------------------------------------


def test_cloudhub_settings_come_from_every_key_of_its_section(tmp_path: Path) -> None:
    cfg = load_cloud(
        tmp_path,
        """
modules:
  cloudHub:
    nodeLimit: 7
    keepaliveInterval: 3
    readTimeout: 9
    writeTimeout: 4
    window: 16
    maxFrameBytes: 1048576
    batching: false
    closeTimeout: 0.5
    shutdownTimeout: 1.5
    websocket: {address: 127.0.0.2, port: 10444}
""",
    )
    assert HubSettings.from_config(cfg.modules.cloud_hub) == HubSettings(
        host="127.0.0.2",
        port=10444,
        node_limit=7,
        window=16,
        keepalive_interval=3,
        read_timeout=9,
        write_timeout=4,
        max_frame_bytes=1048576,
        allow_batching=False,
        close_timeout=0.5,
        shutdown_timeout=1.5,
    )


def test_the_api_rate_limit_scales_with_the_node_limit_unless_it_is_set(tmp_path: Path) -> None:
    assert cloud_config.kube_rate(load_cloud(tmp_path, "modules: {cloudHub: {nodeLimit: 40}}")) == (200.0, 400)
    set_by_hand = load_cloud(tmp_path, "kubeAPIConfig: {qps: 3, burst: 2}")
    assert cloud_config.kube_rate(set_by_hand) == (3.0, 2)


def test_upstream_retries_come_from_the_edge_controller_section(tmp_path: Path) -> None:
    cfg = load_cloud(tmp_path, "modules: {edgeController: {upstreamAttempts: 2, upstreamMaxBackoff: 0.5}}")
    assert RetryPolicy.from_config(cfg.modules.edge_controller) == RetryPolicy(attempts=2, max_delay=0.5)


REFUSED_CLOUD = [
    ("modules: {cloudHub: {websocket: {enable: false}}}", "modules.cloudHub.websocket.enable: cannot be false"),
    ("modules: {cloudHub: {enable: false}}", "modules.cloudHub.enable: cannot be false"),
    ("modules: {edgeController: {enable: false}}", "modules.edgeController.enable: cannot be false"),
    ("kind: EdgeCore", "kind: Input should be 'CloudCore'"),
    ("apiVersion: edgecore.config.kubeedge.io/v1alpha2", "apiVersion: Input should be 'cloudcore.config"),
    ("kubeAPIConfig: {contentType: application/vnd.kubernetes.protobuf}", "kubeAPIConfig.contentType is not supp"),
    ("modules: {cloudHub: {quic: {enable: false}}}", "modules.cloudHub.quic is not supported by kubage"),
    ("modules: {cloudHub: {authorization: {enable: true}}}", "node authorization is always on"),
    ("modules: {syncController: {enable: true}}", "modules.syncController is not supported by kubage: edges res"),
    ("modules: {deviceController: {enable: true}}", "modules.deviceController is not supported by kubage"),
    ("modules: {cloudStream: {tunnelPort: 10004}}", "modules.cloudStream.tunnelPort is not supported by kubage: edg"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED_CLOUD)
def test_cloudcore_refuses_keys_it_cannot_honour(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + str(tmp_path / "cloudcore.yaml") + ".*") as refused:
        load_cloud(tmp_path, text)
    assert message in str(refused.value)
    if "not supported" in message:
        assert str(refused.value).endswith("; remove it")


# --- edgecore.yaml -------------------------------------------------------------------------------------------


def test_edgehub_settings_come_from_every_key_of_its_section(tmp_path: Path) -> None:
    cfg = load_edge(
        tmp_path,
        """
modules:
  edgeHub:
    heartbeat: 4
    window: 8
    batching: false
    maxFrameBytes: 2097152
    projectID: p1
    websocket:
      server: 127.0.0.1:1,127.0.0.1:2
      serverHostname: cloud.example
      handshakeTimeout: 3
      readDeadline: 11
      writeDeadline: 5
      closeTimeout: 0.25
""",
    )
    assert EdgeHubSettings.from_config(cfg.modules.edge_hub, NodeName("n1")) == EdgeHubSettings(
        server="127.0.0.1:1,127.0.0.1:2",
        node_name=NodeName("n1"),
        project_id="p1",
        keepalive_interval=4,
        read_timeout=11,
        write_timeout=5,
        handshake_timeout=3,
        max_frame_bytes=2097152,
        batching=False,
        window=8,
        close_timeout=0.25,
        server_hostname="cloud.example",
    )


def test_eventbus_settings_come_from_every_key_of_its_section(tmp_path: Path) -> None:
    cfg = load_edge(
        tmp_path,
        """
modules:
  eventBus:
    mqttMode: 2
    mqttServerExternal: tcp://127.0.0.1:1999
    mqttQOS: 0
    clientID: gw-1
    keepalive: 12
    connectTimeout: 2
    window: 5
    maxQueued: 50
    maxWait: 1.5
    maxIncoming: 60
""",
    )
    assert EventBusSettings.from_config(cfg.modules.event_bus) == EventBusSettings(
        server="tcp://127.0.0.1:1999",
        client_id="gw-1",
        qos=0,
        keepalive=12,
        timeout=2,
        window=5,
        max_queued=50,
        max_wait=1.5,
    )
    assert cfg.modules.event_bus.max_incoming == 60  # DeviceTwin's inbox (edgecore.app)


REFUSED_EDGE = [
    ("modules: {edgeHub: {messageQPS: 30}}", "modules.edgeHub.messageQPS is not supported by kubage: the outbox"),
    ("modules: {edgeHub: {messageBurst: 60}}", "modules.edgeHub.messageBurst is not supported by kubage"),
    ("modules: {edgeHub: {token: abc}}", "modules.edgeHub.token is not supported by kubage: keadm join"),
    ("modules: {edgeHub: {enable: false}}", "modules.edgeHub.enable: cannot be false"),
    ("modules: {edgeHub: {websocket: {enable: false}}}", "modules.edgeHub.websocket.enable: cannot be false"),
    ("modules: {edgeHub: {heartbeat: 15, websocket: {readDeadline: 15}}}", "must be longer than heartbeat (15 s)"),
    ("database: {driverName: mysql}", "database.driverName: Input should be 'sqlite3'"),
    ("modules: {eventBus: {mqttMode: 0}}", "modules.eventBus.mqttMode: Input should be 2"),
    ("modules: {eventBus: {mqttServerInternal: tcp://127.0.0.1:1884}}", "EdgeCore runs no broker of its own"),
    ("modules: {edgeStream: {server: 192.0.2.1:10004}}", "modules.edgeStream.server is not supported by kubage: st"),
    ("modules: {metaManager: {remoteQueryTimeout: 60}}", "modules.metaManager is not supported by kubage"),
    ("modules: {edged: {tailoredKubeletConfig: {}}}", "Edged is not a kubelet"),
    ("kind: CloudCore", "kind: Input should be 'EdgeCore'"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED_EDGE)
def test_edgecore_refuses_keys_it_cannot_honour(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_edge(tmp_path, text)
    assert message in str(refused.value)


class NoRuntime:
    """A runtime factory that must not be called: with Edged off there is nothing to run pods on."""

    def __call__(self, endpoint: str) -> FullRuntime:
        raise AssertionError(f"the runtime at {endpoint} was asked for with modules.edged.enable: false")


async def test_edged_off_makes_a_device_only_gateway_with_no_room_for_pods(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")  # the hub's TLS context is built at start
    cert, key = pki.node_files("gw-1")
    cfg = load_edge(
        tmp_path,
        f"""
database: {{dataSource: {tmp_path / "edge.db"}}}
modules:
  edged: {{enable: false, hostnameOverride: gw-1, nodeIP: 127.0.0.1, rootDirectory: {tmp_path / "edged"}}}
  eventBus: {{enable: false}}
  edgeHub: {{rotateCertificates: false, tlsCaFile: {pki.ca_file}, tlsCertFile: {cert}, tlsPrivateKeyFile: {key}}}
""",
    )
    modules, close = await edge_app.build(cfg, NoRuntime())
    try:
        assert [m.name for m in modules] == ["edgehub", "node", "monitor", "systemd"]
        assert not (tmp_path / "edged").exists()
    finally:
        await close()
    status = node_status(hostname="gw-1", host_ip="127.0.0.1", runtime_version="", max_pods=0)
    assert status["allocatable"]["pods"] == "0"  # what the reporter sends with Edged off: no scheduler places pods
