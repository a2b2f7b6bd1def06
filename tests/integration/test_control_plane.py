"""The control plane the other tests stand on is a real kube-apiserver, reached through kubernetes_asyncio."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.api_client import ApiClient

from scripts.harness.cluster import EDGE_LABEL, ControlPlane, command


async def api_client(plane: ControlPlane) -> ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(plane.kubeconfig), client_configuration=configuration)
    return ApiClient(configuration)


async def test_pod_bound_to_an_edge_node_is_listed_then_watched(control_plane: ControlPlane) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    node_name = f"edge-{uuid.uuid4().hex[:8]}"
    async with await api_client(control_plane) as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        node = await core.create_node(
            client.V1Node(metadata=client.V1ObjectMeta(name=node_name, labels={EDGE_LABEL: ""}))
        )
        assert node.metadata.labels[EDGE_LABEL] == ""
        edge_nodes = await core.list_node(label_selector=EDGE_LABEL)
        assert node_name in [n.metadata.name for n in edge_nodes.items]

        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="sensor-reader", labels={"app": "sensor"}),
            spec=client.V1PodSpec(
                node_name=node_name,
                containers=[client.V1Container(name="main", image="localhost/busybox:1.35")],
            ),
        )
        created = await core.create_namespaced_pod(namespace, pod)
        assert created.spec.node_name == node_name

        listed = await core.list_namespaced_pod(namespace, field_selector=f"spec.nodeName={node_name}")
        assert [p.metadata.name for p in listed.items] == ["sensor-reader"]

        async def watch_for_update() -> str:
            w = watch.Watch()
            async with w.stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"spec.nodeName={node_name}",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=30,
            ) as stream:
                async for event in stream:
                    labels = event["object"].metadata.labels or {}
                    if event["type"] == "MODIFIED" and labels.get("stage") == "updated":
                        rv: str = event["object"].metadata.resource_version
                        return rv
            raise AssertionError("watch ended without the update")

        watcher = asyncio.create_task(watch_for_update())
        await asyncio.sleep(0.2)  # the watch is opened from the list's resourceVersion, so timing cannot hide it
        patched = await core.patch_namespaced_pod(
            "sensor-reader", namespace, {"metadata": {"labels": {"stage": "updated"}}}
        )
        seen_rv = await asyncio.wait_for(watcher, timeout=30)
        assert seen_rv == patched.metadata.resource_version
        assert int(seen_rv) > int(listed.metadata.resource_version)


def test_readyz_through_kubectl_style_raw_get(control_plane: ControlPlane) -> None:
    """The printed kubeconfig is complete: a plain HTTPS client with its credentials gets /readyz = ok."""
    kc = yaml.safe_load(control_plane.kubeconfig.read_text())
    cluster = kc["clusters"][0]["cluster"]
    user = kc["users"][0]["user"]
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            files[key] = Path(d) / key
            files[key].write_bytes(base64.b64decode(cluster.get(key) or user[key]))
        ctx = ssl.create_default_context(cafile=str(files["certificate-authority-data"]))
        ctx.load_cert_chain(str(files["client-certificate-data"]), str(files["client-key-data"]))
        with urllib.request.urlopen(f"{cluster['server']}/readyz", context=ctx, timeout=10) as resp:
            assert resp.read() == b"ok"


def test_down_stops_exactly_what_up_started(tmp_path: Path) -> None:
    """A second, private control plane: `down` kills its own pids and removes its directory."""
    state = tmp_path / "cp"
    up = subprocess.run(
        command("up", state),
        capture_output=True,
        text=True,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    pids = [int((state / f"{name}.pid").read_text()) for name in ("etcd", "kube-apiserver")]
    for pid in pids:
        assert Path(f"/proc/{pid}").exists()
    down = subprocess.run(
        command("down", state),
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        # Gone, or a zombie waiting for init to reap it: either way no longer running.
        assert not status.exists() or "State:\tZ" in status.read_text()


pytestmark = pytest.mark.kube
