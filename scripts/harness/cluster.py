"""The control plane of ``scripts/control_plane.py`` (etcd, kube-apiserver, kube-scheduler and
kube-controller-manager on loopback), run as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cloudcore.edgecontroller.placement import EDGE_LABEL
from cloudcore.kube import Kube
from scripts.control_plane import EDGE_NODE_ADDRESSES
from scripts.harness.procs import is_ours

T = TypeVar("T")
SCRIPT = Path(__file__).resolve().parent.parent / "control_plane.py"
UP_TIMEOUT_S = 300.0


__all__ = [
    "EDGE_LABEL",
    "ControlPlane",
    "ControlPlaneError",
    "create_edge_node",
    "create_namespace",
    "edge_node",
    "next_node_address",
]


_addresses = itertools.cycle(EDGE_NODE_ADDRESSES)


def next_node_address() -> str:
    """A loopback address for an edge node of its own, covered by the control plane's kubelet certificate."""
    return next(_addresses)


def edge_node(name: str) -> dict[str, Any]:
    """A Node labelled as CloudCore watches for (``node-role.kubernetes.io/edge``)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {EDGE_LABEL: ""}}}


async def create_edge_node(kube: Kube, name: str) -> None:
    await kube.request("POST", "/api/v1/nodes", body=edge_node(name))


async def create_namespace(kube: Kube, name: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """A namespace that takes pods: created, then until the controller-manager gave it its ``default``
    ServiceAccount (the ServiceAccount admission refuses every pod there before that)."""
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    async with asyncio.timeout(timeout):
        while await kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default") is None:  # noqa: ASYNC110 - polling the API server
            await asyncio.sleep(0.05)


class ControlPlaneError(RuntimeError):
    """``control_plane.py up`` failed; the message holds the end of what it printed."""


def command(verb: str, state: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), verb, "--dir", str(state)]


def kubeconfig_from(stdout: str) -> Path:
    """The kubeconfig ``up`` prints as ``export KUBECONFIG=...``."""
    for line in stdout.splitlines():
        if line.startswith("export KUBECONFIG="):
            return Path(line.split("=", 1)[1].strip())
    raise ControlPlaneError(f"control plane printed no KUBECONFIG:\n{stdout}")


@dataclass(frozen=True)
class ControlPlane:
    state_dir: Path
    kubeconfig: Path

    @classmethod
    def up(cls, state: Path, timeout: float = UP_TIMEOUT_S) -> ControlPlane:
        """Start it (building kube-apiserver on first use) and wait until it is ready."""
        plane, _ = cls.up_beside(state, lambda: None, timeout)
        return plane

    @classmethod
    def up_beside(
        cls, state: Path, start_other: Callable[[], T], timeout: float = UP_TIMEOUT_S
    ) -> tuple[ControlPlane, T]:
        """``up`` in a child process while ``start_other()`` runs here (both take seconds); both results."""
        with subprocess.Popen(command("up", state), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as up:
            try:
                other = start_other()
                stdout, stderr = up.communicate(timeout=timeout)
            except BaseException:
                up.kill()
                up.wait()
                raise
        if up.returncode != 0:
            raise ControlPlaneError(f"scripts/control-plane up failed:\n{stderr[-4000:]}")
        return cls(state, kubeconfig_from(stdout)), other

    @property
    def pki(self) -> Path:
        """ca.crt (also the kubelet CA), apiserver-kubelet-client.*, kubelet-serving.* for stream servers."""
        return self.state_dir / "pki"

    def pid(self, name: str) -> int | None:
        """The pid ``up`` recorded for ``name`` (``etcd``, ``kube-apiserver``) while it still runs that binary."""
        try:
            pid = int((self.state_dir / f"{name}.pid").read_text())
            exe = (self.state_dir / f"{name}.exe").read_text()
        except (OSError, ValueError):
            return None
        return pid if is_ours(pid, exe) else None

    def run(self, verb: str) -> None:
        subprocess.run(command(verb, self.state_dir), check=True)

    def down(self) -> None:
        """Stop exactly what ``up`` started; never raises."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(command("down", self.state_dir), check=False, capture_output=True, timeout=120)
