"""EdgeCore end to end: real containerd + runc, the real API server, the real cloudcore and edgecore commands.

A pod created in the API server runs as a real container at the edge; configmaps and secrets reach it;
it keeps running with the tunnel cut and across an EdgeCore SIGKILL while offline, and its status reaches
the API server once the tunnel is back.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloudcore.kube import Kube, KubeError
from edgecore.edged.cri import CriRuntime
from edgecore.edged.runtime import POD_UID, ContainerState
from scripts.harness.cluster import create_namespace
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually

pytestmark = pytest.mark.kube


@pytest.fixture
async def runtime(containerd: Any) -> AsyncIterator[CriRuntime]:
    client = CriRuntime(containerd.endpoint)
    try:
        yield client
    finally:
        await client.close()


async def api_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] | None = await kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return pod


async def running_in_api(kube: Kube, namespace: str, name: str) -> bool:
    pod = await api_pod(kube, namespace, name)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return bool(pod and pod["status"].get("phase") == "Running" and statuses and "running" in statuses[0]["state"])


async def sandboxes_of(runtime: CriRuntime, uid: str) -> list[Any]:
    return [s for s in await runtime.list_sandboxes() if s.labels.get(POD_UID) == uid]


async def setup_node(kube: Kube) -> tuple[str, str]:
    namespace, node = f"t-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    return namespace, node


def pod_spec(name: str, node: str, script: str, **extra: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "localhost/busybox:1.35",
        "command": ["sh", "-c", script],
        **extra.pop("container", {}),
    }
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
            **extra,
        },
    }


async def test_a_pod_runs_in_containerd_logs_reports_running_and_is_removed(
    kube: Kube, cloud: CloudCoreProcess, containerd: Any, runtime: CriRuntime, pki: Pki, tmp_path: Path
) -> None:
    namespace, node = await setup_node(kube)
    edge = EdgeCoreProcess(
        tmp_path / "edge", node=node, server=f"127.0.0.1:{cloud.port}", runtime_endpoint=containerd.endpoint, pki=pki
    )
    edge.start()
    try:
        await edge.wait_ready()
        await eventually(lambda: _node_registered(kube, node), timeout=30)
        pod = await kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods",
            body=pod_spec("hello", node, "echo hello-from-edge; sleep 3600"),
        )
        uid = pod["metadata"]["uid"]
        await eventually(lambda: running_in_api(kube, namespace, "hello"), timeout=60)
        await eventually(lambda: "hello-from-edge" in edge.pod_log(namespace, "hello", uid, "main"), timeout=10)
        assert " stdout F hello-from-edge" in edge.pod_log(namespace, "hello", uid, "main")  # CRI log format
        [sandbox] = await sandboxes_of(runtime, uid)
        containers = await runtime.list_containers(sandbox.id)
        assert [c.state for c in containers] == [ContainerState.RUNNING]
        # deleting the pod stops and removes its container and sandbox, and the API server lets it go
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/hello")
        await eventually(lambda: _gone(kube, runtime, namespace, "hello", uid), timeout=60)
    finally:
        assert edge.stop() == 0, edge.tail()


async def _node_registered(kube: Kube, node: str) -> bool:
    try:
        found = await kube.get(f"/api/v1/nodes/{node}")
    except KubeError:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in found.get("status", {}).get("conditions") or [])


async def _gone(kube: Kube, runtime: CriRuntime, namespace: str, name: str, uid: str) -> bool:
    return await api_pod(kube, namespace, name) is None and not await sandboxes_of(runtime, uid)


async def test_configmap_volume_and_secret_env_reach_the_container(
    kube: Kube, cloud: CloudCoreProcess, containerd: Any, pki: Pki, tmp_path: Path
) -> None:
    namespace, node = await setup_node(kube)
    await kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        body={"metadata": {"name": "app-config"}, "data": {"mode": "turbo"}},
    )
    await kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        body={"metadata": {"name": "app-secret"}, "data": {"token": base64.b64encode(b"t0ps3cret").decode()}},
    )
    edge = EdgeCoreProcess(
        tmp_path / "edge", node=node, server=f"127.0.0.1:{cloud.port}", runtime_endpoint=containerd.endpoint, pki=pki
    )
    edge.start()
    try:
        await edge.wait_ready()
        spec = pod_spec(
            "reader",
            node,
            'echo "mode=$(cat /etc/app/mode) token=$TOKEN"; sleep 3600',
            container={
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": True}],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token"}}}],
            },
            volumes=[{"name": "cfg", "configMap": {"name": "app-config"}}],
        )
        pod = await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=spec)
        uid = pod["metadata"]["uid"]
        await eventually(
            lambda: "mode=turbo token=t0ps3cret" in edge.pod_log(namespace, "reader", uid, "main"), timeout=60
        )
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/reader")
        await eventually(lambda: _deleted(kube, namespace, "reader"), timeout=60)
    finally:
        assert edge.stop() == 0, edge.tail()


async def _deleted(kube: Kube, namespace: str, name: str) -> bool:
    return await api_pod(kube, namespace, name) is None


async def test_offline_the_pod_keeps_running_and_survives_an_edgecore_kill(
    kube: Kube, cloud: CloudCoreProcess, containerd: Any, runtime: CriRuntime, pki: Pki, tmp_path: Path
) -> None:
    namespace, node = await setup_node(kube)
    async with FaultProxy("127.0.0.1", cloud.port) as proxy:
        edge = EdgeCoreProcess(
            tmp_path / "edge",
            node=node,
            server=f"127.0.0.1:{proxy.port}",
            runtime_endpoint=containerd.endpoint,
            pki=pki,
        )
        edge.start()
        try:
            await edge.wait_ready()
            pod = await kube.request(
                "POST", f"/api/v1/namespaces/{namespace}/pods", body=pod_spec("steady", node, "echo up; sleep 3600")
            )
            uid = pod["metadata"]["uid"]
            await eventually(lambda: running_in_api(kube, namespace, "steady"), timeout=60)
            [sandbox] = await sandboxes_of(runtime, uid)
            [container] = await runtime.list_containers(sandbox.id)
            # the tunnel goes dark
            proxy.refuse()
            proxy.cut()
            await asyncio.sleep(3)
            assert (await runtime.container_status(container.id)).state is ContainerState.RUNNING
            # EdgeCore dies hard and comes back while still offline: it adopts, it does not duplicate
            edge.kill()
            edge.start()
            await edge.wait_ready()
            await asyncio.sleep(4)  # a couple of sync rounds
            assert [s.id for s in await sandboxes_of(runtime, uid)] == [sandbox.id]
            assert [c.id for c in await runtime.list_containers(sandbox.id)] == [container.id]
            assert (await runtime.container_status(container.id)).state is ContainerState.RUNNING
            assert "kubage_edged_pods_adopted_total 1.0" in edge.metrics()
            # meanwhile the container is stopped from outside; EdgeCore restarts it, offline
            await runtime.stop_container(container.id, 0)
            await eventually(lambda: _restarted(runtime, sandbox.id), timeout=30)
            # back online: the API server learns the current status (one restart)
            proxy.heal()
            await eventually(lambda: _restart_count(kube, namespace, "steady", 1), timeout=60)
        finally:
            assert edge.stop() == 0, edge.tail()


async def _restarted(runtime: CriRuntime, sandbox_id: str) -> bool:
    containers = await runtime.list_containers(sandbox_id)
    return any(c.attempt == 1 and c.state is ContainerState.RUNNING for c in containers)


async def _restart_count(kube: Kube, namespace: str, name: str, count: int) -> bool:
    pod = await api_pod(kube, namespace, name)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and statuses[0].get("restartCount") == count and "running" in statuses[0]["state"]
