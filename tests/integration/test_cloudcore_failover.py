"""Failures around CloudCore: SIGKILL and restart, API server restart, an offline edge, two replicas."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from cloudcore.kube import Kube
from edgecore.edgehub import EdgeHub
from edgecore.metamanager.store import Change
from scripts.harness.cluster import ControlPlane, create_edge_node, create_namespace
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from tests.integration.test_cloudcore import pod_body
from tests.tunnel import eventually, running_edge

# These count every message a resync sends: CloudCore's own toleration patch of each new pod (autonomy.py)
# would add an update per pod, at a moment of its own.
NO_AUTONOMY = {"modules": {"edgeController": {"podAutonomy": False}}}

pytestmark = pytest.mark.kube

MERGE = "application/merge-patch+json"


async def api_pods(kube: Kube, namespace: str, node: str) -> dict[str, str]:
    items, _ = await kube.list_all(
        f"/api/v1/namespaces/{namespace}/pods", query=[("fieldSelector", f"spec.nodeName={node}")]
    )
    return {p["metadata"]["uid"]: p["metadata"]["resourceVersion"] for p in items}


async def edge_pods(edge: EdgeHub) -> dict[str, str]:
    return {p["metadata"]["uid"]: p["metadata"]["resourceVersion"] for p in await edge.store.list_kind("pod")}


async def create(kube: Kube, namespace: str, name: str, node: str) -> int:
    created = await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod_body(name, node))
    return int(created["metadata"]["resourceVersion"])


async def relabel(kube: Kube, namespace: str, name: str, value: str) -> int:
    patched = await kube.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}",
        body={"metadata": {"labels": {"round": value}}},
        content_type=MERGE,
    )
    return int(patched["metadata"]["resourceVersion"])


async def delete(kube: Kube, namespace: str, name: str) -> int:
    """Delete at once; returns the resourceVersion of the deletion."""
    deleted = await kube.request(
        "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body={"gracePeriodSeconds": 0}
    )
    return int(deleted["metadata"]["resourceVersion"])


async def test_cloudcore_killed_apiserver_restarted_edge_offline_resyncs_only_the_difference(
    control_plane: ControlPlane, kube: Kube, pki: Pki, tmp_path: Path
) -> None:
    namespace, node = f"t-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    await create_edge_node(kube, node)
    for i in range(30):
        await create(kube, namespace, f"base-{i}", node)
    cloudcore = CloudCoreProcess(tmp_path / "cc", kubeconfig=control_plane.kubeconfig, pki=pki, extra=NO_AUTONOMY)
    cloudcore.start()
    db = tmp_path / "edge.db"
    try:
        await cloudcore.wait_ready()
        async with running_edge(pki, cloudcore.port, db, node=node) as edge:
            await eventually(lambda: _same(edge, kube, namespace, node), timeout=30)
            assert edge.last_resync == 32  # the node, its 30 pods and their namespace's root CA
        # The edge is offline from here on. 100 pods are created; CloudCore is SIGKILLed and restarted...
        for i in range(100):
            await create(kube, namespace, f"new-{i}", node)
        cloudcore.kill()
        cloudcore.start()
        await cloudcore.wait_ready()
        # ...the API server restarts...
        await asyncio.to_thread(control_plane.run, "restart-apiserver")
        await cloudcore.wait_ready()
        # ...and the churn goes on: 50 of the new pods updated, 25 deleted; 10 old ones updated, 5 deleted.
        last = 0
        for i in range(50):
            last = max(last, await relabel(kube, namespace, f"new-{i}", "two"))
        for i in range(75, 100):
            last = max(last, await delete(kube, namespace, f"new-{i}"))
        for i in range(10):
            last = max(last, await relabel(kube, namespace, f"base-{i}", "two"))
        for i in range(25, 30):
            last = max(last, await delete(kube, namespace, f"base-{i}"))
        await eventually(lambda: _cloud_has_seen(cloudcore, last), timeout=30)
        async with running_edge(pki, cloudcore.port, db, node=node) as edge:
            await eventually(lambda: _same(edge, kube, namespace, node), timeout=30)
            # 75 new pods, 10 updated and 5 deleted old ones; the 20 untouched old ones and the node stay put
            assert edge.last_resync == 90
            assert edge.applied == 90
    finally:
        cloudcore.stop()


async def _same(edge: EdgeHub, kube: Kube, namespace: str, node: str) -> bool:
    return await edge_pods(edge) == await api_pods(kube, namespace, node)


async def _cloud_has_seen(cloudcore: CloudCoreProcess, latest: int) -> bool:
    """CloudCore's pod cache has seen our last write (its readyz only says it listed once)."""
    line = next(
        x for x in cloudcore.metrics().splitlines() if x.startswith('kubage_watch_resource_version{resource="pods"}')
    )
    return int(float(line.split()[-1])) >= latest


async def test_an_edge_fails_over_between_two_replicas_without_duplicates(
    control_plane: ControlPlane, kube: Kube, pki: Pki, tmp_path: Path
) -> None:
    namespace, node = f"t-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    await create_edge_node(kube, node)
    first = CloudCoreProcess(tmp_path / "cc1", kubeconfig=control_plane.kubeconfig, pki=pki, extra=NO_AUTONOMY)
    second = CloudCoreProcess(tmp_path / "cc2", kubeconfig=control_plane.kubeconfig, pki=pki, extra=NO_AUTONOMY)
    first.start()
    second.start()
    try:
        await first.wait_ready()
        await second.wait_ready()
        servers = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        async with running_edge(pki, servers, tmp_path / "edge.db", node=node) as edge:
            for i in range(20):
                await create(kube, namespace, f"p-{i}", node)
            await eventually(lambda: _same(edge, kube, namespace, node), timeout=30)
            assert edge.server.endswith(f":{first.port}")
            applied: list[Change] = []
            edge.add_change_listener(applied.extend)
            first.kill()  # SIGKILL the replica the node is on
            changed: set[int] = set()  # the resourceVersion each change made
            for i in range(20, 40):
                changed.add(await create(kube, namespace, f"p-{i}", node))
            for i in range(5):
                changed.add(await relabel(kube, namespace, f"p-{i}", "after-failover"))
            await eventually(lambda: _same(edge, kube, namespace, node), timeout=30)
            assert edge.server.endswith(f":{second.port}"), second.tail()
            # The 25 changes made while the first replica was gone reached the edge from the second one,
            # each sent once (a resync after the failover, or live) and applied once. Whatever else the
            # control plane changed for this node meanwhile (its Node, say) may come too, but once.
            seen = [f"{c.operation} {c.resource}@{c.resource_version}" for c in applied]
            pods = {int(c.resource_version) for c in applied if "/pod/" in c.resource}
            assert pods == changed, seen
            assert _acked(second.metrics()) == len(applied), (seen, second.tail())
    finally:
        first.stop()
        second.stop()


def _acked(metrics: str) -> int:
    line = next(x for x in metrics.splitlines() if x.startswith("kubage_cloudhub_acked_messages_total "))
    return int(float(line.split()[1]))
