"""`keadm reset`: the edge side in a temporary root (systemd is only ever touched for the real "/"), the cloud
side against the real API server."""

from __future__ import annotations

import os
import pty
from pathlib import Path

import pytest

from cloudcore.kube import Kube, NotFound
from keadm.paths import EdgeLayout
from scripts.harness.cluster import ControlPlane
from tests.integration.test_keadm_init import INSTALLED, init, keadm

KEPT = {
    "/api/v1/namespaces/kubeedge",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/devices.devices.kubeedge.io",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/devicemodels.devices.kubeedge.io",
}


def joined(root: Path) -> EdgeLayout:
    """The files `keadm join` leaves under ``root``, plus a neighbour that is not ours."""
    layout = EdgeLayout(root)
    for path, text in (
        (layout.config, "modules: {}\n"),
        (layout.ca_file, "ca\n"),
        (layout.cert_file, "cert\n"),
        (layout.database, "db\n"),
        (layout.edged_root / "pods" / "p" / "volume", "data\n"),
        (layout.unit_file, "[Service]\n"),
        (root / "etc" / "hostname", "gateway-1\n"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return layout


def present(layout: EdgeLayout) -> list[Path]:
    return [p for p in (layout.unit_file, layout.etc, layout.var) if p.exists()]


async def test_edge_reset_removes_what_join_installed_and_nothing_else(tmp_path: Path) -> None:
    layout = joined(tmp_path)
    out = await keadm("reset", "--root-dir", str(tmp_path), "--force")
    assert out.returncode == 0, out.stderr
    assert present(layout) == []
    assert (tmp_path / "etc" / "hostname").read_text() == "gateway-1\n"
    assert (tmp_path / "etc" / "systemd" / "system").is_dir()  # only our unit file goes
    for path in (layout.unit_file, layout.etc, layout.var):
        assert f"removed {path}" in out.stdout

    again = await keadm("reset", "--root-dir", str(tmp_path), "--force")
    assert again.returncode == 0, again.stderr
    assert f"nothing to remove under {tmp_path}" in again.stdout


async def test_edge_reset_without_force_and_without_a_terminal_refuses(tmp_path: Path) -> None:
    layout = joined(tmp_path)
    out = await keadm("reset", "--root-dir", str(tmp_path))
    assert out.returncode == 1
    assert "pass --force" in out.stderr
    assert present(layout) == [layout.unit_file, layout.etc, layout.var]


@pytest.mark.parametrize(("answer", "removed"), [("y\n", True), ("\n", False), ("no\n", False)])
async def test_edge_reset_asks_on_a_terminal(tmp_path: Path, answer: str, removed: bool) -> None:
    layout = joined(tmp_path)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())  # typed ahead: the line discipline holds it until keadm reads
        out = await keadm("reset", "--root-dir", str(tmp_path), stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert "[y/N]" in out.stdout
    if removed:
        assert out.returncode == 0, out.stderr
        assert present(layout) == []
    else:
        assert out.returncode == 1
        assert present(layout) == [layout.unit_file, layout.etc, layout.var]


async def test_cloud_reset_removes_cloudcore_but_keeps_crds_and_namespace(
    control_plane: ControlPlane, kube: Kube
) -> None:
    assert (await init(control_plane)).returncode == 0
    token = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "join-token-test-reset",
            "namespace": "kubeedge",
            "labels": {"app.kubernetes.io/component": "join-token"},
        },
        "data": {"node": "edge-1"},
    }
    await kube.request("POST", "/api/v1/namespaces/kubeedge/configmaps", body=token)
    unrelated = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-ours", "namespace": "kubeedge"}}
    await kube.request("POST", "/api/v1/namespaces/kubeedge/configmaps", body=unrelated)
    try:
        refused = await keadm("reset", "--kube-config", str(control_plane.kubeconfig))
        assert refused.returncode == 1  # no terminal, no --force
        await kube.get("/apis/apps/v1/namespaces/kubeedge/deployments/cloudcore")

        out = await keadm("reset", "--kube-config", str(control_plane.kubeconfig), "--force")
        assert out.returncode == 0, out.stderr
        assert "deleted Deployment kubeedge/cloudcore" in out.stdout
        assert "deleted Secret kubeedge/casecret" in out.stdout
        assert "deleted 1 join-token record(s)" in out.stdout
        for path in [*INSTALLED, "/api/v1/namespaces/kubeedge/configmaps/join-token-test-reset"]:
            if path in KEPT:
                await kube.get(path)
                continue
            with pytest.raises(NotFound):
                await kube.get(path)
        await kube.get("/api/v1/namespaces/kubeedge/configmaps/not-ours")

        again = await keadm("reset", "--kube-config", str(control_plane.kubeconfig), "--force")
        assert again.returncode == 0, again.stderr  # nothing left to delete is not an error
        assert "deleted Deployment" not in again.stdout
    finally:
        await kube.request("DELETE", "/api/v1/namespaces/kubeedge/configmaps/not-ours")
