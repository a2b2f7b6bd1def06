"""The edge in a real cluster: kube-scheduler and kube-controller-manager place and manage the pods, the
ServiceAccount admission gives each its token volume, and pods get their own network from the bridge CNI.

Workloads are created as a user would (Deployments, DaemonSets, Jobs) and the scheduler places them; nodes
are real EdgeCores, each with its own containerd. Pod traffic stays on the machine: the bridges have no
masquerade and the pods talk only to each other and to the node.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcore.kube import Kube
from scripts.control_plane import DEFAULT_TOLERATION_S, NODE_MONITOR_GRACE_S
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.containerd import BUSYBOX_IMAGE, Containerd
from scripts.harness.containerd import start as start_containerd
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from tests.edges import edge_node, ready_with_cidr
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually

pytestmark = pytest.mark.kube

KUBECTL_IMAGE = "localhost/kubectl:1.32"


@pytest.fixture(scope="module")
def second_containerd() -> Iterator[Containerd]:
    """A containerd of its own for a second node: one runtime belongs to one node, as under the kubelet."""
    ctd = start_containerd()
    try:
        yield ctd
    finally:
        ctd.stop()


def _condition(obj: dict[str, Any], kind: str) -> str:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), "")


async def pods(kube: Kube, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    query = [("labelSelector", selector)] if selector else None
    listed = await kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=query)
    return list(listed.get("items") or [])


def _ready(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and _condition(pod, "Ready") == "True"


def _container_ids(pod: dict[str, Any]) -> list[str]:
    return [s.get("containerID", "") for s in (pod.get("status") or {}).get("containerStatuses") or []]


def web_template(labels: dict[str, str], *, version: str = "1") -> dict[str, Any]:
    """busybox httpd on 8080 outside the host network, serving its version and its pod's name."""
    script = f"mkdir -p /www && echo v{version} $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    return {
        "metadata": {"labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "web",
                    "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", script],
                    "env": [{"name": "VERSION", "value": version}],
                    "ports": [{"containerPort": 8080}],
                }
            ],
        },
    }


# --- workloads -----------------------------------------------------------------------------------------------


async def test_a_deployment_is_scheduled_over_two_edge_nodes_and_rolled_to_a_new_version(
    kube: Kube,
    cloud: CloudCoreProcess,
    containerd: Containerd,
    second_containerd: Containerd,
    pki: Pki,
    tmp_path: Path,
) -> None:
    namespace, run = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    await create_namespace(kube, namespace)
    labels = {"test.kubage.io/run": run}
    async with (
        edge_node(kube, cloud, containerd, pki, tmp_path / "a", labels=labels) as a,
        edge_node(kube, cloud, second_containerd, pki, tmp_path / "b", labels=labels) as b,
    ):
        template = web_template({"app": "web"})
        template["spec"]["nodeSelector"] = labels  # only this test's nodes, not those other tests left behind
        template["spec"]["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",  # set by the node, as a kubelet sets it
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}},
            }
        ]
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        }
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        await kube.request("POST", path, body=deployment)
        await eventually(lambda: _rolled_out(kube, namespace, 3), timeout=120)
        placed = {p["spec"]["nodeName"] for p in await pods(kube, namespace, "app=web")}
        assert placed == {a.node, b.node}, placed  # the scheduler spread them
        before = {p["metadata"]["name"] for p in await pods(kube, namespace, "app=web")}
        assert all(p["status"]["podIP"].startswith("10.244.") for p in await pods(kube, namespace, "app=web"))

        rolled = web_template({"app": "web"}, version="2")["spec"]["containers"]
        patch = {"spec": {"template": {"spec": {"containers": rolled}}}}
        await kube.request("PATCH", f"{path}/web", body=patch, content_type="application/strategic-merge-patch+json")
        await eventually(lambda: _rolled_out(kube, namespace, 3, version="2"), timeout=180)
        after = await pods(kube, namespace, "app=web")
        assert not before & {p["metadata"]["name"] for p in after}  # every old pod went
        assert all(p["spec"]["containers"][0]["env"][0]["value"] == "2" for p in after)


async def _rolled_out(kube: Kube, namespace: str, replicas: int, version: str = "1") -> bool:
    deployment = await kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
    status = deployment.get("status") or {}
    if status.get("observedGeneration") != deployment["metadata"]["generation"]:
        return False
    current = await pods(kube, namespace, "app=web")
    return (
        status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and len(current) == replicas
        and all(_ready(p) and p["spec"]["containers"][0]["env"][0]["value"] == version for p in current)
    )


async def test_a_daemonset_runs_one_pod_on_each_edge_node_and_a_job_completes(
    kube: Kube,
    cloud: CloudCoreProcess,
    containerd: Containerd,
    second_containerd: Containerd,
    pki: Pki,
    tmp_path: Path,
) -> None:
    namespace, run = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    await create_namespace(kube, namespace)
    labels = {"test.kubage.io/run": run}
    async with (
        edge_node(kube, cloud, containerd, pki, tmp_path / "a", labels=labels) as a,
        edge_node(kube, cloud, second_containerd, pki, tmp_path / "b", labels=labels) as b,
    ):
        template = web_template({"app": "agent"})
        template["spec"]["nodeSelector"] = labels
        daemonset = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template},
        }
        await kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/daemonsets", body=daemonset)

        async def one_per_node() -> bool:
            found = await pods(kube, namespace, "app=agent")
            return sorted(p["spec"]["nodeName"] for p in found if _ready(p)) == sorted([a.node, b.node])

        await eventually(one_per_node, timeout=120)

        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": labels,
                        "containers": [{"name": "work", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo done"]}],
                    }
                },
            },
        }
        failing = {**job, "metadata": {"name": "fails"}}
        failing["spec"] = json.loads(json.dumps(job["spec"]).replace('"echo done"', '"exit 3"'))
        # a CronJob fires on the minute: created first, its run overlaps the rest of the test
        cronjob = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "every-minute"},
            "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1, "jobTemplate": {"spec": job["spec"]}},
        }
        cronjobs = f"/apis/batch/v1/namespaces/{namespace}/cronjobs"
        await kube.request("POST", cronjobs, body=cronjob)
        jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        await kube.request("POST", jobs, body=job)
        await kube.request("POST", jobs, body=failing)
        await eventually(lambda: _job_condition(kube, f"{jobs}/once", "Complete"), timeout=120)
        await eventually(lambda: _job_condition(kube, f"{jobs}/fails", "Failed"), timeout=120)
        [done] = await pods(kube, namespace, "job-name=once")
        assert done["status"]["phase"] == "Succeeded"
        assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

        async def cron_succeeded() -> bool:
            return "lastSuccessfulTime" in (await kube.get(f"{cronjobs}/every-minute")).get("status", {})

        await eventually(cron_succeeded, timeout=150)


async def _job_condition(kube: Kube, path: str, kind: str) -> bool:
    return _condition(await kube.get(path), kind) == "True"

    # --- networking ----------------------------------------------------------------------------------------------


async def test_pods_on_the_bridge_reach_each_other_and_a_host_port_and_get_their_hosts_and_dns(
    kube: Kube, cloud: CloudCoreProcess, containerd: Containerd, pki: Pki, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    async with edge_node(kube, cloud, containerd, pki, tmp_path / "edge", clusterDNS=["10.0.0.10"]) as edge:
        host_port = 30000 + int(uuid.uuid4().hex[:4], 16) % 2000
        server = web_template({"app": "server"})
        server["metadata"]["name"] = "server"
        server["spec"]["nodeName"] = edge.node
        server["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "hostPort": host_port}]
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=server)
        await eventually(lambda: _pod_ready(kube, namespace, "server"), timeout=60)
        server_ip = (await _pod(kube, namespace, "server"))["status"]["podIP"]

        script = f"wget -q -O- http://{server_ip}:8080/; cat /etc/hosts /etc/resolv.conf; hostname"
        client = {
            "metadata": {"name": "client"},
            "spec": {
                "nodeName": edge.node,
                "restartPolicy": "Never",
                "hostname": "probe",
                "subdomain": "svc-a",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["plc.local", "plc"]}],
                "dnsConfig": {"searches": ["factory.example"], "options": [{"name": "ndots", "value": "2"}]},
                "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}],
            },
        }
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=client)
        await eventually(lambda: _phase(kube, namespace, "client", "Succeeded"), timeout=60)
        pod = await _pod(kube, namespace, "client")
        out = edge.pod_log(namespace, "client", pod["metadata"]["uid"], "c")
        assert "v1 server" in out  # pod to pod, over the bridge
        client_ip = pod["status"]["podIP"]
        assert f"{client_ip}\tprobe.svc-a.{namespace}.svc.cluster.local\tprobe" in out
        assert "10.1.2.3\tplc.local\tplc" in out
        assert "nameserver 10.0.0.10" in out  # ClusterFirst with the node's clusterDNS
        assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in out
        assert "factory.example" in out and "ndots:2" in out
        assert " stdout F probe" in out

        # hostPort: the node's address, port-mapped into the pod by the portmap plugin
        body = await asyncio.to_thread(_http_get, f"http://{edge.node_ip}:{host_port}/")
        assert body.startswith("v1 server")


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def _pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = await kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found


async def _pod_ready(kube: Kube, namespace: str, name: str) -> bool:
    return _ready(await _pod(kube, namespace, name))


async def _phase(kube: Kube, namespace: str, name: str, phase: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found is not None and found.get("status", {}).get("phase") == phase


async def test_an_edgecore_restart_keeps_pod_addresses_and_deleted_pods_free_theirs(
    kube: Kube, cloud: CloudCoreProcess, containerd: Containerd, pki: Pki, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    async with edge_node(kube, cloud, containerd, pki, tmp_path / "edge") as edge:
        for i in range(3):
            pod = web_template({"app": "web"})
            pod["metadata"]["name"] = f"web-{i}"
            pod["spec"]["nodeName"] = edge.node
            await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
        for i in range(3):
            await eventually(lambda i=i: _pod_ready(kube, namespace, f"web-{i}"), timeout=60)  # type: ignore[misc]
        before = {p["metadata"]["name"]: (p["status"]["podIP"], _container_ids(p)) for p in await pods(kube, namespace)}
        ipam = edge.workdir / "edged" / "cni" / "networks" / "kubage"
        assert _reserved(ipam) == {ip for ip, _ in before.values()}

        assert edge.stop() == 0, edge.tail()
        edge.start()
        await edge.wait_ready()
        await asyncio.sleep(3)  # a few sync rounds of the restarted Edged
        after = {p["metadata"]["name"]: (p["status"]["podIP"], _container_ids(p)) for p in await pods(kube, namespace)}
        assert after == before  # adopted: same containers, same addresses
        assert _reserved(ipam) == {ip for ip, _ in before.values()}

        for i in range(3):
            await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/web-{i}")
        await eventually(lambda: _no_pods(kube, namespace), timeout=60)
        await eventually(lambda: _reserved_async(ipam), timeout=10)


def _reserved(ipam: Path) -> set[str]:
    return {p.name for p in ipam.glob("*") if p.name[0].isdigit()}


async def _reserved_async(ipam: Path) -> bool:
    return not _reserved(ipam)


async def _no_pods(kube: Kube, namespace: str) -> bool:
    return not await pods(kube, namespace)

    # --- service-account tokens ----------------------------------------------------------------------------------


async def test_an_in_cluster_client_in_an_edge_pod_authenticates_with_the_token_bound_to_its_pod(
    kube: Kube,
    control_plane: ControlPlane,
    cloud: CloudCoreProcess,
    containerd: Containerd,
    pki: Pki,
    tmp_path: Path,
) -> None:
    kubectl = Path("/usr/bin/kubectl").resolve()
    if not kubectl.exists():
        pytest.fail("this test runs the real kubectl as the in-cluster client, and /usr/bin/kubectl is missing")
    containerd.import_image(KUBECTL_IMAGE, ["/bin/kubectl"], add={"/bin/kubectl": kubectl})
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    api = kube.host.removeprefix("https://")
    async with edge_node(kube, cloud, containerd, pki, tmp_path / "edge", kubernetesService=api) as edge:
        pod = {
            "metadata": {"name": "whoami", "labels": {"tier": "probe"}},
            "spec": {
                "nodeName": edge.node,
                "hostNetwork": True,  # the API server listens on loopback here; no kube-proxy at the edge
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": KUBECTL_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c"],
                        "args": [
                            "kubectl auth whoami -o json && cat /etc/podinfo/labels && echo && "
                            "echo cpu=$CPU_MILLIS ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
                        ],
                        "env": [
                            {
                                "name": "CPU_MILLIS",
                                "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
                            }
                        ],
                        "resources": {"limits": {"cpu": "250m", "memory": "128Mi"}},
                        "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}],
                    }
                ],
                "volumes": [
                    {
                        "name": "podinfo",
                        "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
                    }
                ],
            },
        }
        created = await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
        volumes = [v["name"] for v in created["spec"]["volumes"]]
        assert any(v.startswith("kube-api-access-") for v in volumes)  # added by the ServiceAccount admission
        await eventually(lambda: _finished(kube, namespace, "whoami"), timeout=90)
        found = await _pod(kube, namespace, "whoami")
        out = edge.pod_log(namespace, "whoami", found["metadata"]["uid"], "c")
        assert found["status"]["phase"] == "Succeeded", out
        lines = [line.split(" ", 3)[3] for line in out.splitlines() if " stdout " in line]
        review = json.loads("".join(lines[: lines.index("}") + 1]))
        user = review["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{namespace}:default"
        assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["whoami"]  # bound to the pod
        assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [found["metadata"]["uid"]]
        assert 'tier="probe"' in lines
        assert f"cpu=250 ns={namespace}" in lines


async def _finished(kube: Kube, namespace: str, name: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found is not None and found.get("status", {}).get("phase") in ("Succeeded", "Failed")

    # --- what the edge does not support, events, parallel pods ---------------------------------------------------


async def test_a_pvc_volume_says_why_the_pod_waits_and_events_tell_the_story(
    kube: Kube, cloud: CloudCoreProcess, containerd: Containerd, pki: Pki, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    async with edge_node(kube, cloud, containerd, pki, tmp_path / "edge") as edge:
        pvc = web_template({"app": "pvc"})
        pvc["metadata"]["name"] = "needs-pvc"
        pvc["spec"]["nodeName"] = edge.node
        pvc["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pvc)
        web = web_template({"app": "web"})
        web["metadata"]["name"] = "web"
        web["spec"]["nodeName"] = edge.node
        await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=web)
        await eventually(lambda: _pod_ready(kube, namespace, "web"), timeout=60)
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/web")
        await eventually(lambda: _gone(kube, namespace, "web"), timeout=60)

        async def waiting_reason() -> str:
            found = await _pod(kube, namespace, "needs-pvc")
            statuses = found.get("status", {}).get("containerStatuses") or [{}]
            return str(statuses[0].get("state", {}).get("waiting", {}).get("message", ""))

        await eventually(lambda: _contains(waiting_reason(), "persistentVolumeClaim volumes are not supported"))
        found = await _pod(kube, namespace, "needs-pvc")
        ready = next(c for c in found["status"]["conditions"] if c["type"] == "PodReadyToStartContainers")
        assert ready["status"] == "False" and "persistentVolumeClaim" in ready["message"]

        async def reasons(name: str) -> set[str]:
            listed = await kube.request(
                "GET",
                f"/api/v1/namespaces/{namespace}/events",
                query=[("fieldSelector", f"involvedObject.name={name}")],
            )
            return {e["reason"] for e in listed.get("items") or [] if e["source"].get("component") == "kubelet"}

        await eventually(lambda: _contains_all(reasons("web"), {"Pulled", "Created", "Started", "Killing"}))
        await eventually(lambda: _contains_all(reasons("needs-pvc"), {"FailedMount"}))


async def _contains(text: Awaitable[str], part: str) -> bool:
    return part in await text


async def _contains_all(found: Awaitable[set[str]], wanted: set[str]) -> bool:
    return wanted <= await found


async def _gone(kube: Kube, namespace: str, name: str) -> bool:
    return await kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}") is None


async def test_ten_pods_with_a_long_grace_period_terminate_side_by_side(
    kube: Kube, cloud: CloudCoreProcess, containerd: Containerd, pki: Pki, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    grace = 8
    async with edge_node(kube, cloud, containerd, pki, tmp_path / "edge") as edge:
        for i in range(10):
            pod = {
                "metadata": {"name": f"slow-{i}", "labels": {"app": "slow"}},
                "spec": {
                    "nodeName": edge.node,
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": grace,
                    # PID 1 ignores SIGTERM: each pod takes its whole grace period to stop
                    "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]}],
                },
            }
            await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
        await eventually(lambda: _all_ready(kube, namespace, 10), timeout=90)
        started = time.monotonic()
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", "app=slow")])
        await eventually(lambda: _no_pods(kube, namespace), timeout=10 * grace)
        took = time.monotonic() - started
        print(f"10 pods with a {grace} s grace period: gone after {took:.1f} s")
        assert took < 3 * grace, took  # one after the other it would be 10 x grace


async def _all_ready(kube: Kube, namespace: str, count: int) -> bool:
    found = await pods(kube, namespace)
    return len(found) == count and all(_ready(p) for p in found)

    # --- a disconnect --------------------------------------------------------------------------------------------


async def test_a_disconnected_edge_keeps_its_pods_and_an_opted_out_pod_is_evicted(
    kube: Kube,
    cloud: CloudCoreProcess,
    containerd: Containerd,
    second_containerd: Containerd,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """With the real node-lifecycle and taint-eviction controllers: the cut node goes NotReady and is tainted,
    CloudCore then gives its pods kubage's tolerations (not before: a healthy node's pods stay as created), and
    a pod that opted out is evicted, so eviction really happens here; the others are never deleted and come
    back Ready with the same containers. The second node keeps the zone healthy
    (in a zone where every node is down, Kubernetes evicts nothing at all)."""
    namespace, zone = f"t-{uuid.uuid4().hex[:8]}", f"zone-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    labels = {"topology.kubernetes.io/zone": zone}
    async with (
        FaultProxy("127.0.0.1", cloud.port) as proxy,
        edge_node(kube, proxy, containerd, pki, tmp_path / "cut", labels=labels) as cut,
        edge_node(kube, cloud, second_containerd, pki, tmp_path / "stays", labels=labels),
    ):
        for name, annotations in (("kept", {}), ("evicted", {"edge.kubage.io/autonomy": "false"})):
            pod = web_template({"app": name})
            pod["metadata"] |= {"name": name, "annotations": annotations}
            pod["spec"]["nodeName"] = cut.node
            await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
        await eventually(lambda: _pod_ready(kube, namespace, "kept"), timeout=60)
        await eventually(lambda: _pod_ready(kube, namespace, "evicted"), timeout=60)
        healthy = await _pod(kube, namespace, "kept")
        assert healthy["metadata"]["generation"] == 1  # a pod on a healthy node is left as it was created
        before = _container_ids(healthy)

        proxy.refuse()
        proxy.cut()
        cut_for = NODE_MONITOR_GRACE_S + 3 * DEFAULT_TOLERATION_S
        await eventually(lambda: _tainted(kube, cut.node), timeout=NODE_MONITOR_GRACE_S + 30)
        await eventually(lambda: _tolerates_for_ever(kube, namespace, "kept"), timeout=DEFAULT_TOLERATION_S)
        await eventually(lambda: _being_deleted(kube, namespace, "evicted"), timeout=3 * DEFAULT_TOLERATION_S)
        await asyncio.sleep(cut_for - NODE_MONITOR_GRACE_S)
        kept = await _pod(kube, namespace, "kept")
        assert not kept["metadata"].get("deletionTimestamp")
        assert _condition(await kube.get(f"/api/v1/nodes/{cut.node}"), "Ready") == "Unknown"

        proxy.heal()
        await eventually(lambda: ready_with_cidr(kube, cut.node), timeout=60)
        await eventually(lambda: _pod_ready(kube, namespace, "kept"), timeout=60)
        assert _container_ids(await _pod(kube, namespace, "kept")) == before
        await eventually(lambda: _gone(kube, namespace, "evicted"), timeout=60)


async def _tolerates_for_ever(kube: Kube, namespace: str, name: str) -> bool:
    tolerations = (await _pod(kube, namespace, name))["spec"].get("tolerations") or []
    unreachable = [t for t in tolerations if t.get("key") == "node.kubernetes.io/unreachable"]
    return bool(unreachable) and all("tolerationSeconds" not in t for t in unreachable)


async def _tainted(kube: Kube, node: str) -> bool:
    taints = (await kube.get(f"/api/v1/nodes/{node}")).get("spec", {}).get("taints") or []
    return any(t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute" for t in taints)


async def _being_deleted(kube: Kube, namespace: str, name: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found is None or bool(found["metadata"].get("deletionTimestamp"))
