"""Config errors name the file, the key and the reason; valid files and overrides load into typed models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cloudcore.config import CloudCoreConfig
from common.config import ConfigError, load_config
from edgecore.config import EdgeCoreConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cloudcore.yaml"
    path.write_text(text)
    return path


def test_kubeedge_style_file_loads_into_typed_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
kubeAPIConfig:
  kubeConfig: /root/.kube/config
  qps: 50
modules:
  cloudHub:
    nodeLimit: 2000
    advertiseAddress: [192.0.2.10]
    tlsCAFile: /etc/ca.crt
    websocket: {port: 10443}
""",
    )
    cfg = load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})
    assert cfg.kube_api_config.kube_config == "/root/.kube/config"
    assert cfg.kube_api_config.qps == 50.0
    assert cfg.modules.cloud_hub.node_limit == 2000
    assert cfg.modules.cloud_hub.advertise_address == ["192.0.2.10"]
    assert cfg.modules.cloud_hub.tls_ca_file == "/etc/ca.crt"
    assert cfg.modules.cloud_hub.websocket.port == 10443
    assert cfg.modules.cloud_hub.https.port == 10002  # untouched sections keep KubeEdge's defaults


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "modules:\n  cloudHub:\n    nodeLimt: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})
    assert str(err.value) == f"{path}: modules.cloudHub.nodeLimt: unknown key"


def test_wrong_type_names_key_reason_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "modules:\n  cloudHub:\n    websocket:\n      port: ten-thousand\n")
    with pytest.raises(ConfigError) as err:
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})
    message = str(err.value)
    assert message.startswith(f"{path}: modules.cloudHub.websocket.port: ")
    assert "valid integer" in message
    assert "'ten-thousand'" in message


def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "modules:\n  cloudHub:\n    nodeLimit: 0\n")
    with pytest.raises(ConfigError, match=r"modules\.cloudHub\.nodeLimit: Input should be greater than 0"):
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})
    assert str(err.value) == f"{path}: config file not found"


def test_invalid_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "modules:\n  cloudHub: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ={})


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(CloudCoreConfig, write(tmp_path, ""), env_prefix="CLOUDCORE", environ={})
    assert cfg == CloudCoreConfig()


def test_environment_overrides_file_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "modules:\n  cloudHub:\n    nodeLimit: 10\n")
    env = {
        "CLOUDCORE__MODULES__CLOUDHUB__NODELIMIT": "750",
        "CLOUDCORE__MODULES__CLOUDHUB__HTTPS__ENABLE": "false",
        "CLOUDCORE__KUBEAPICONFIG__KUBECONFIG": "/tmp/kc",
        "UNRELATED": "x",
    }
    cfg = load_config(CloudCoreConfig, path, env_prefix="CLOUDCORE", environ=env)
    assert cfg.modules.cloud_hub.node_limit == 750
    assert cfg.modules.cloud_hub.https.enable is False
    assert cfg.kube_api_config.kube_config == "/tmp/kc"


def test_environment_override_with_unknown_key_is_named() -> None:
    env = {"EDGECORE__MODULES__EDGEHUB__HEARTBEET": "5"}
    with pytest.raises(
        ConfigError, match=r"environment EDGECORE__MODULES__EDGEHUB__HEARTBEET: unknown key 'HEARTBEET'"
    ):
        load_config(EdgeCoreConfig, None, env_prefix="EDGECORE", environ=env)


def test_environment_override_with_wrong_type_is_refused() -> None:
    env = {"EDGECORE__MODULES__EDGEHUB__HEARTBEAT": "often"}
    with pytest.raises(ConfigError, match=r"<defaults>: modules\.edgeHub\.heartbeat: .*'often'"):
        load_config(EdgeCoreConfig, None, env_prefix="EDGECORE", environ=env)


def test_loaded_config_is_immutable() -> None:
    cfg = load_config(EdgeCoreConfig, None, env_prefix="EDGECORE", environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.modules.edge_hub.heartbeat = 1  # type: ignore[misc]


LAX = [  # what operators' files hold, as pydantic's lax mode read it: the same files load the same
    ("modules: {edgeHub: {heartbeat: '5', window: 2.0, batching: 'no'}}", ("heartbeat", 5.0), ("window", 2)),
    ("modules: {edgeHub: {window: '12', batching: 0}}", ("window", 12), ("batching", False)),
    ("modules: {edgeHub: {project_id: abc, batching: 'on'}}", ("project_id", "abc"), ("batching", True)),
]


@pytest.mark.parametrize(("text", "first", "second"), LAX)
def test_values_are_read_as_lax_as_before(
    tmp_path: Path, text: str, first: tuple[str, object], second: tuple[str, object]
) -> None:
    hub = load_config(EdgeCoreConfig, write(tmp_path, text), env_prefix="EDGECORE", environ={}).modules.edge_hub
    for name, value in (first, second):
        assert getattr(hub, name) == value
        assert type(getattr(hub, name)) is type(value)


REFUSED = [
    (
        "modules: {edgeHub: {window: 1.5}}",
        "modules.edgeHub.window: Input should be a valid integer, got a number with a fractional part (got 1.5)",
    ),
    (
        "modules: {edgeHub: {batching: maybe}}",
        "modules.edgeHub.batching: Input should be a valid boolean, unable to interpret input (got 'maybe')",
    ),
    ("modules: {edgeHub: 5}", "modules.edgeHub: Input should be a valid dictionary or instance of EdgeHub (got 5)"),
    (
        "modules: {edged: {clusterDNS: [1.1.1.1, 2]}}",
        "modules.edged.clusterDNS.1: Input should be a valid string (got 2)",
    ),
    ("modules: {edged: {nodeLabels: {a: 1}}}", "modules.edged.nodeLabels.a: Input should be a valid string (got 1)"),
    (
        "modules: {edged: {network: foo}}",
        "modules.edged.network: Input should be 'bridge', 'existing' or 'none' (got 'foo')",
    ),
    (
        "modules: {edged: {bridgeName: a-very-long-bridge}}",
        "modules.edged.bridgeName: String should have at most 15 characters (got 'a-very-long-bridge')",
    ),
    (
        "modules: {edged: {syncFrequency: -1, nosuch: 1}, localController: {port: 70000}}",
        "modules.edged.syncFrequency: Input should be greater than 0 (got -1); modules.edged.nosuch: unknown key; "
        "modules.localController.port: Input should be less than or equal to 65535 (got 70000)",
    ),
    (
        "modules: {edgeHub: {websocket: {readDeadline: 3}}}",
        "modules.edgeHub: websocket.readDeadline (3 s) must be "
        "longer than heartbeat (15 s), or the link is closed between two keepalives",
    ),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_every_problem_is_named_with_its_key_in_one_message(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(EdgeCoreConfig, path, env_prefix="EDGECORE", environ={})
    assert str(err.value) == f"{path}: {message}"
