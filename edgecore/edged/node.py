"""The node as the edge reports it: registration once, then status when it changes (or every minute)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import upstream
from common.cli import package_version
from common.logging import get_logger
from common.upstream import UpstreamPublisher

log = get_logger(__name__)

MAX_PODS = 110  # the kubelet's default
KUBELET_PORT = 10350  # KubeEdge's edged port


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def host_ip_towards(host: str) -> str:
    """The local address the kernel would use to reach ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            address: str = probe.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


def architecture() -> str:
    """The node's architecture in Go's names, as Kubernetes labels and reports it."""
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())


def default_labels(node: str) -> dict[str, str]:
    """The labels a kubelet puts on its node (charts select nodes by kubernetes.io/os; spreading uses hostname)."""
    arch = architecture()
    return {
        "kubernetes.io/hostname": node,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
    }


def node_status(*, hostname: str, host_ip: str, runtime_version: str, max_pods: int = MAX_PODS) -> dict[str, Any]:
    resources = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib()}Ki", "pods": str(max_pods)}
    arch = architecture()
    ok = {"status": "False", "reason": "", "message": ""}
    return {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": hostname}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "EdgeReady", "message": "edgecore is posting ready status"},
            {**ok, "type": "MemoryPressure", "reason": "KubeletHasSufficientMemory"},
            {**ok, "type": "DiskPressure", "reason": "KubeletHasNoDiskPressure"},
            {**ok, "type": "PIDPressure", "reason": "KubeletHasSufficientPID"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "machineID": _read("/etc/machine-id"),
            "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(),
            "osImage": os_image(),
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": f"v1.36.3-kubage-{package_version()}",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch,
        },
    }


class NodeReporter:
    def __init__(
        self,
        *,
        node_name: str,
        labels: dict[str, str],
        status: Callable[[], Awaitable[dict[str, Any]]],
        publish: UpstreamPublisher,
        interval: float = 10.0,
        resend_after: float = 60.0,
    ) -> None:
        self._node = node_name
        self._labels = {**default_labels(node_name), **labels}
        self._status = status
        self._publish = publish
        self._interval = interval
        self._resend_after = resend_after
        self._now = asyncio.Event()

    def resend(self, connected: bool = True) -> None:
        """Connected again: report the status at once (the node-lifecycle controller may have marked the node
        NotReady while it was away, and only a fresh status sets it Ready)."""
        if connected:
            self._now.set()

    async def run(self) -> None:
        status = await self._status()
        # Registration goes through the outbox like everything else: a node that boots offline registers
        # when the cloud comes back.
        await self._publish(upstream.node_registration(self._node, labels=self._labels, status=status))
        log.info("node_registration_queued", node=self._node)
        self._now.clear()
        last, since = status, 0.0
        while True:
            asked = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._now.wait()
                    asked = True
            self._now.clear()
            since += self._interval
            status = await self._status()
            if asked or status != last or since >= self._resend_after:
                await self._publish(upstream.node_status(self._node, status))
                last, since = status, 0.0
