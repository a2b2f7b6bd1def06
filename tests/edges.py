"""A real EdgeCore as a node of the test cluster: started, Ready with a pod CIDR, stopped at the end."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cloudcore.kube import Kube
from scripts.harness.containerd import Containerd
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually


@contextlib.asynccontextmanager
async def edge_node(
    kube: Kube,
    cloud: CloudCoreProcess | FaultProxy,
    containerd: Containerd,
    pki: Pki,
    workdir: Path,
    *,
    labels: dict[str, str] | None = None,
    **edged: Any,
) -> AsyncIterator[EdgeCoreProcess]:
    """A running EdgeCore whose node is Ready with a pod CIDR, its pod bridge removed at the end."""
    node = f"edge-{uuid.uuid4().hex[:6]}"
    edge = EdgeCoreProcess(
        workdir,
        node=node,
        server=f"127.0.0.1:{cloud.port}",
        runtime_endpoint=containerd.endpoint,
        pki=pki,
        extra={"modules": {"edged": {"nodeLabels": labels or {}, **edged}}},
    )
    edge.start()
    try:
        await edge.wait_ready()
        await eventually(lambda: ready_with_cidr(kube, node), timeout=60)
        yield edge
    finally:
        assert edge.stop() == 0, edge.tail()


async def ready_with_cidr(kube: Kube, node: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/nodes/{node}")
    if found is None or not (found.get("spec") or {}).get("podCIDR"):
        return False
    return _condition(found, "Ready") == "True"


def _condition(obj: dict[str, Any], kind: str) -> str:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), "")
