"""The cloudcore command against the real API server: delivery, authorization, status, leases, failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from cloudcore.kube import Kube, KubeError
from common import upstream
from common.upstream import ResourceType
from edgecore.edgehub import EdgeHub
from scripts.harness.cluster import EDGE_LABEL, ControlPlane, create_edge_node, create_namespace
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from tests.tunnel import eventually, running_edge

# Every namespace's root CA, in each pod's kube-api-access volume (the ServiceAccount admission adds it).
ROOT_CA = "kube-root-ca.crt"

pytestmark = pytest.mark.kube


@pytest.fixture
def cloudcore(control_plane: ControlPlane, pki: Pki, tmp_path: Path) -> Iterator[CloudCoreProcess]:
    proc = CloudCoreProcess(tmp_path / "cloudcore", kubeconfig=control_plane.kubeconfig, pki=pki)
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() in (0, None, -9), proc.tail()


@pytest.fixture
async def core(control_plane: ControlPlane) -> AsyncIterator[client.CoreV1Api]:
    """kubernetes_asyncio's typed API on the same kubeconfig, to create objects as a user would."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(control_plane.kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
async def namespace(kube: Kube) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, name)
    return name


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pod_body(name: str, node: str, *, configmap: str | None = None, secret: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "localhost/busybox:1.35"}
    spec: dict[str, Any] = {"nodeName": node, "containers": [container]}
    if configmap:
        spec["volumes"] = [{"name": "cfg", "configMap": {"name": configmap}}]
    if secret:
        container["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}]
    return {"metadata": {"name": name, "labels": {"app": "demo"}}, "spec": spec}


async def kinds(edge: EdgeHub) -> dict[str, dict[str, str]]:
    """What the edge store holds: kind → name → resourceVersion."""
    out: dict[str, dict[str, str]] = {}
    for kind in ("pod", "configmap", "secret", "node"):
        for obj in await edge.store.list_kind(kind):
            out.setdefault(kind, {})[obj["metadata"]["name"]] = obj["metadata"]["resourceVersion"]
    return out


async def test_pod_and_what_it_uses_arrive_follow_updates_and_leave(
    control_plane: ControlPlane,
    kube: Kube,
    core: client.CoreV1Api,
    cloudcore: CloudCoreProcess,
    pki: Pki,
    namespace: str,
    tmp_path: Path,
) -> None:
    node = unique("edge")
    await create_edge_node(kube, node)
    meta = client.V1ObjectMeta
    await core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=meta(name="cfg"), data={"mode": "fast"})
    )
    await core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=meta(name="creds"), string_data={"token": "t0"})
    )
    container = client.V1Container(
        name="main",
        image="localhost/busybox:1.35",
        env=[
            client.V1EnvVar(
                name="TOKEN",
                value_from=client.V1EnvVarSource(secret_key_ref=client.V1SecretKeySelector(name="creds", key="token")),
            )
        ],
    )
    created = await core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=meta(name="app", labels={"app": "demo"}),
            spec=client.V1PodSpec(
                node_name=node,
                containers=[container],
                volumes=[client.V1Volume(name="cfg", config_map=client.V1ConfigMapVolumeSource(name="cfg"))],
            ),
        ),
    )
    await cloudcore.wait_ready()
    async with running_edge(pki, cloudcore.port, tmp_path / "edge.db", node=node) as edge:
        await eventually(
            lambda: _holds(edge, {"pod": {"app"}, "configmap": {"cfg", ROOT_CA}, "secret": {"creds"}, "node": {node}})
        )
        pod = await edge.store.get("pod", namespace, "app")
        assert pod["metadata"]["uid"] == created.metadata.uid
        assert "status" not in pod and "managedFields" not in pod["metadata"]
        # updates follow
        patched = await kube.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/app",
            body={"metadata": {"labels": {"stage": "two"}}},
            content_type="application/merge-patch+json",
        )
        cm = await kube.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/configmaps/cfg",
            body={"data": {"mode": "slow"}},
            content_type="application/merge-patch+json",
        )
        await eventually(
            lambda: _versions(
                edge,
                {
                    ("pod", "app"): patched["metadata"]["resourceVersion"],
                    ("configmap", "cfg"): cm["metadata"]["resourceVersion"],
                },
            )
        )
        assert (await edge.store.get("configmap", namespace, "cfg"))["data"] == {"mode": "slow"}
        # a status-only change is not echoed down
        applied = edge.applied
        await kube.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/app/status",
            body={"status": {"phase": "Running"}},
            content_type="application/merge-patch+json",
        )
        await asyncio.sleep(0.5)
        assert edge.applied == applied
        # the pod goes, and with it what only it used
        await core.delete_namespaced_pod("app", namespace, grace_period_seconds=0)
        await eventually(lambda: _holds(edge, {"node": {node}}))


async def _holds(edge: EdgeHub, expected: dict[str, set[str]]) -> bool:
    held = await kinds(edge)
    return {k: set(v) for k, v in held.items()} == expected


async def _versions(edge: EdgeHub, expected: dict[tuple[str, str], str]) -> bool:
    held = await kinds(edge)
    return all(held.get(kind, {}).get(name) == rv for (kind, name), rv in expected.items())


async def test_a_node_gets_and_reads_only_its_own_objects(
    kube: Kube, cloudcore: CloudCoreProcess, pki: Pki, namespace: str, tmp_path: Path
) -> None:
    mine, theirs = unique("edge-a"), unique("edge-b")
    for node in (mine, theirs):
        await create_edge_node(kube, node)
    for name, node in (("cfg-mine", mine), ("cfg-theirs", theirs)):
        await kube.request(
            "POST", f"/api/v1/namespaces/{namespace}/configmaps", body={"metadata": {"name": name}, "data": {"k": "v"}}
        )
        await kube.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", body=pod_body(f"pod-{name}", node, configmap=name)
        )
    theirs_pod = await kube.get(f"/api/v1/namespaces/{namespace}/pods/pod-cfg-theirs")
    await cloudcore.wait_ready()
    responses: list[Any] = []

    async def on_message(message: Any) -> None:
        responses.append(message)

    async with running_edge(pki, cloudcore.port, tmp_path / "a.db", node=mine, on_message=on_message) as edge:
        await eventually(
            lambda: _holds(edge, {"pod": {"pod-cfg-mine"}, "configmap": {"cfg-mine", ROOT_CA}, "node": {mine}})
        )
        for name in ("cfg-mine", "cfg-theirs"):
            assert await edge.send(upstream.query(ResourceType.CONFIGMAP, namespace, name, now_ms=0))
        await eventually(lambda: len(responses) == 2)
        answers = {m.route.resource.rsplit("/", 1)[1]: m.content for m in responses}
        assert answers["cfg-mine"]["data"] == {"k": "v"}
        assert answers["cfg-theirs"] == {"error": f"no pod on node {mine!r} uses configmap {namespace}/cfg-theirs"}
        # a status for another node's pod is refused, not written
        await edge.publish(
            upstream.pod_status(namespace, "pod-cfg-theirs", theirs_pod["metadata"]["uid"], {"phase": "Failed"})
        )
        await eventually(lambda: len(edge.outbox) == 0)
        pod = await kube.get(f"/api/v1/namespaces/{namespace}/pods/pod-cfg-theirs")
        assert pod["status"].get("phase") != "Failed"
        assert "request_refused" in cloudcore.tail(200) and mine in cloudcore.tail(200)
        await eventually(lambda: _holds_as_in_the_api(edge, kube, namespace, mine))


async def _holds_as_in_the_api(edge: EdgeHub, kube: Kube, namespace: str, node: str) -> bool:
    """Exactly these objects at the versions the API server has now (controllers update nodes and pods)."""
    return await kinds(edge) == {
        "pod": {"pod-cfg-mine": await _rv(kube, namespace, "pods", "pod-cfg-mine")},
        "configmap": {
            "cfg-mine": await _rv(kube, namespace, "configmaps", "cfg-mine"),
            ROOT_CA: await _rv(kube, namespace, "configmaps", ROOT_CA),
        },
        "node": {node: (await kube.get(f"/api/v1/nodes/{node}"))["metadata"]["resourceVersion"]},
    }


async def _rv(kube: Kube, namespace: str, plural: str, name: str) -> str:
    return str((await kube.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}"))["metadata"]["resourceVersion"])


async def test_pod_status_reaches_the_api_and_the_lease_is_renewed(
    kube: Kube, cloudcore: CloudCoreProcess, pki: Pki, namespace: str, tmp_path: Path
) -> None:
    node = unique("edge")
    await cloudcore.wait_ready()
    async with running_edge(pki, cloudcore.port, tmp_path / "edge.db", node=node) as edge:
        # the edge registers its node
        await edge.publish(
            upstream.node_registration(
                node,
                labels={"site": "plant-7"},
                status={
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "EdgeReady"}],
                },
            )
        )
        await eventually(lambda: _node_ready(kube, node))
        registered = await kube.get(f"/api/v1/nodes/{node}")
        assert registered["metadata"]["labels"]["site"] == "plant-7"
        assert registered["metadata"]["labels"][EDGE_LABEL] == ""
        assert registered["status"]["capacity"]["cpu"] == "2"
        pod = await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod_body("web", node))
        await eventually(lambda: _holds(edge, {"pod": {"web"}, "configmap": {ROOT_CA}, "node": {node}}))
        started = "2026-01-01T00:00:00Z"
        status = {
            "phase": "Running",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
        }
        await edge.publish(upstream.pod_status(namespace, "web", pod["metadata"]["uid"], status))
        await eventually(lambda: _phase(kube, namespace, "web", "Running"))
        # a later report with the same Ready status keeps the original transition time
        later = {
            **status,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-02-02T00:00:00Z"}],
        }
        await edge.publish(upstream.pod_status(namespace, "web", pod["metadata"]["uid"], later))
        await eventually(lambda: len(edge.outbox) == 0)
        await asyncio.sleep(0.3)
        current = await kube.get(f"/api/v1/namespaces/{namespace}/pods/web")
        assert current["status"]["conditions"][0]["lastTransitionTime"] == started
        # the lease is renewed while the session lives
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        await eventually(lambda: _exists(kube, lease_path))
        first = (await kube.get(lease_path))["spec"]["renewTime"]
        await eventually(lambda: _renewed(kube, lease_path, first))
        assert (await kube.get(lease_path))["spec"]["holderIdentity"] == node
        # a status for a pod that was replaced under the same name is dropped, and the stale copy deleted
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/web", body={"gracePeriodSeconds": 0})
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod_body("web", node))
        await edge.publish(upstream.pod_status(namespace, "web", pod["metadata"]["uid"], {"phase": "Failed"}))
        await eventually(lambda: len(edge.outbox) == 0)
        replaced = await kube.get(f"/api/v1/namespaces/{namespace}/pods/web")
        assert replaced["status"].get("phase") != "Failed"
        await eventually(lambda: _uid_of(edge, namespace, "web", replaced["metadata"]["uid"]))


async def _node_ready(kube: Kube, node: str) -> bool:
    try:
        conditions = (await kube.get(f"/api/v1/nodes/{node}")).get("status", {}).get("conditions") or []
    except KubeError:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def _phase(kube: Kube, namespace: str, name: str, phase: str) -> bool:
    return bool((await kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))["status"].get("phase") == phase)


async def _exists(kube: Kube, path: str) -> bool:
    try:
        await kube.get(path)
    except KubeError:
        return False
    return True


async def _renewed(kube: Kube, path: str, first: str) -> bool:
    return bool((await kube.get(path))["spec"]["renewTime"] != first)


async def _uid_of(edge: EdgeHub, namespace: str, name: str, uid: str) -> bool:
    pod = await edge.store.get("pod", namespace, name)
    return pod is not None and pod["metadata"]["uid"] == uid
