"""NodeRestriction's rules for the labels a node sets on itself, at both ends: CloudCore refuses the
registration, and EdgeCore refuses the config before it ever connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from common.nodelabels import forbidden_labels
from edgecore.config import EdgeCoreConfig


def test_a_node_sets_its_own_and_the_kubelet_labels() -> None:
    allowed = {
        "kubernetes.io/hostname": "edge-1",
        "kubernetes.io/arch": "arm64",
        "topology.kubernetes.io/zone": "hall-3",
        "node.kubernetes.io/instance-type": "gw",
        "kubelet.kubernetes.io/anything": "x",
        "example.com/line": "7",
        "plain": "yes",
    }
    assert forbidden_labels("edge-1", allowed) == []


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("node-restriction.kubernetes.io/trusted", "true", "set by admins only"),
        ("a.node-restriction.kubernetes.io/pci", "true", "set by admins only"),
        ("kubernetes.io/hostname", "edge-2", "names another node"),
        ("node-role.kubernetes.io/control-plane", "", "not a label a kubelet may set"),
        ("kubernetes.io/role", "master", "not a label a kubelet may set"),
        ("x.k8s.io/anything", "1", "not a label a kubelet may set"),
    ],
)
def test_labels_that_would_let_a_node_attract_others_workloads_are_refused(key: str, value: str, reason: str) -> None:
    [refused] = forbidden_labels("edge-1", {key: value, "plain": "ok"})
    assert refused.startswith(key) and reason in refused


def test_edgecore_refuses_such_a_config_at_start(tmp_path: Path) -> None:
    path = tmp_path / "edgecore.yaml"
    path.write_text(
        "modules:\n  edged:\n    hostnameOverride: edge-1\n"
        "    nodeLabels:\n      node-role.kubernetes.io/control-plane: ''\n"
    )
    with pytest.raises(ConfigError, match=r"nodeLabels: a node may not set node-role\.kubernetes\.io/control-plane"):
        load_config(EdgeCoreConfig, path, env_prefix="EDGECORE", environ={})
