"""kubectl logs, exec, attach, port-forward, cp and the node proxy to edge pods, through the tunnel.

Everything is real: the API server (which reaches each edge node's "kubelet" at the node's own loopback address
and the stream port, verifies the stream server against the control plane's CA and presents its kubelet-client
certificate), the real ``kubectl`` binary, the real cloudcore and edgecore commands, containerd and runc.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import pty
import socket
import ssl
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from cloudcore.kube import Kube
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.pki import Pki
from scripts.harness.procs import free_port, production_env
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.integration.test_edge_pods import running_in_api
from tests.tunnel import eventually

pytestmark = pytest.mark.kube

CHATTY = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done"


@dataclass
class Edge:
    namespace: str
    node: str
    process: EdgeCoreProcess
    control_plane: ControlPlane

    def kubectl(
        self, *args: str, timeout: float = 60, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.control_plane.kubeconfig), "-n", self.namespace, *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            input=stdin,
            env=production_env(),
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["kubectl", "--kubeconfig", str(self.control_plane.kubeconfig), "-n", self.namespace, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            env=production_env(),
        )


async def start_edge(
    kube: Kube, control_plane: ControlPlane, cloud: CloudCoreProcess, containerd: Any, pki: Pki, workdir: Path
) -> Edge:
    namespace, node = f"s-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    process = EdgeCoreProcess(
        workdir, node=node, server=f"127.0.0.1:{cloud.port}", runtime_endpoint=containerd.endpoint, pki=pki
    )
    process.start()
    await process.wait_ready()
    await eventually(lambda: _node_ready(kube, node), timeout=30)
    return Edge(namespace, node, process, control_plane)


async def _node_ready(kube: Kube, node: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/nodes/{node}")
    conditions = ((found or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture
async def edge(
    kube: Kube, control_plane: ControlPlane, cloud: CloudCoreProcess, containerd: Any, pki: Pki, tmp_path: Path
) -> AsyncIterator[Edge]:
    started = await start_edge(kube, control_plane, cloud, containerd, pki, tmp_path / "edge")
    try:
        yield started
    finally:
        assert started.process.stop() == 0, started.process.tail()


async def run_pod(kube: Kube, edge: Edge, name: str, script: str, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", None) or [
        {"name": "main", "image": "localhost/busybox:1.35", "command": ["sh", "-c", script]}
    ]
    body = {
        "metadata": {"name": name},
        "spec": {
            "nodeName": edge.node,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
            **spec,
        },
    }
    pod = await kube.request("POST", f"/api/v1/namespaces/{edge.namespace}/pods", body=body)
    await eventually(lambda: running_in_api(kube, edge.namespace, name), timeout=60)
    return dict(pod)


async def test_kubectl_logs_with_its_options(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "chatty", CHATTY)
    await eventually(lambda: b"line-5" in edge.kubectl("logs", "chatty").stdout, timeout=20)
    out = edge.kubectl("logs", "chatty", "--tail=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("line-") for line in lines)
    stamped = edge.kubectl("logs", "chatty", "--timestamps", "--tail=1").stdout.decode()
    assert stamped.split(" ", 1)[0].endswith("Z") and stamped.split(" ", 1)[1].startswith("line-")
    recent = edge.kubectl("logs", "chatty", "--since=1s").stdout.decode().splitlines()
    assert 0 < len(recent) <= 8  # five a second
    assert len(edge.kubectl("logs", "chatty", "--limit-bytes=7").stdout) == 7
    assert edge.kubectl("logs", "chatty", "-c", "main", "--tail=1").returncode == 0
    wrong = edge.kubectl("logs", "chatty", "-c", "nosuch")
    assert wrong.returncode != 0 and b"nosuch" in wrong.stderr
    # -f: new lines keep arriving, and the stream ends when kubectl goes away
    follower = edge.popen("logs", "-f", "chatty", "--tail=1")
    assert follower.stdout is not None
    seen = [follower.stdout.readline() for _ in range(4)]
    assert all(line.startswith(b"line-") for line in seen), seen
    numbers = [int(line.split(b"-")[1]) for line in seen]
    assert numbers == sorted(numbers) and numbers[-1] > numbers[0]
    follower.kill()
    follower.communicate(timeout=10)


async def test_kubectl_logs_previous_shows_the_attempt_before(kube: Kube, edge: Edge) -> None:
    script = 'echo "run at $(date +%s%N)"; sleep 1; exit 1'
    await kube.request(
        "POST",
        f"/api/v1/namespaces/{edge.namespace}/pods",
        body={
            "metadata": {"name": "crashy"},
            "spec": {
                "nodeName": edge.node,
                "hostNetwork": True,
                "restartPolicy": "Always",
                "containers": [{"name": "main", "image": "localhost/busybox:1.35", "command": ["sh", "-c", script]}],
            },
        },
    )

    async def restarted() -> bool:
        pod = await kube.get(f"/api/v1/namespaces/{edge.namespace}/pods/crashy")
        return any(s.get("restartCount", 0) >= 1 for s in (pod.get("status") or {}).get("containerStatuses") or [])

    await eventually(restarted, timeout=60)
    previous = edge.kubectl("logs", "crashy", "-p")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout.startswith(b"run at ")


async def test_kubectl_exec_runs_in_the_container_with_its_exit_code_and_stdin(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "box", "sleep 3600")
    out = edge.kubectl("exec", "box", "--", "sh", "-c", "echo out-$HOSTNAME; echo err >&2; exit 3")
    assert out.returncode == 3, out.stderr
    assert out.stdout.startswith(b"out-") and b"err" in out.stderr
    fed = edge.kubectl("exec", "-i", "box", "--", "tr", "a-z", "A-Z", stdin=b"hello edge\n")
    assert fed.returncode == 0, fed.stderr
    assert fed.stdout == b"HELLO EDGE\n"


def run_in_a_terminal(argv: list[str], keys: bytes, timeout: float = 30) -> bytes:
    """``argv`` on a pseudo-terminal (kubectl -t needs one), typing ``keys``; everything it printed."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 91, 0, 0))  # kubectl passes it on
    proc = subprocess.Popen(argv, stdin=secondary, stdout=secondary, stderr=secondary, env=production_env())
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + timeout
    typed = False
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed: kubectl exited
                break
            output += chunk
            if not typed and b"#" in output:  # the shell's prompt
                os.write(main, keys)
                typed = True
        proc.wait(10)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return output


async def test_kubectl_exec_it_gives_a_terminal(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "term", "sleep 3600")
    kubeconfig = str(edge.control_plane.kubeconfig)
    argv = ["kubectl", "--kubeconfig", kubeconfig, "-n", edge.namespace, "exec", "-it", "term", "--", "sh"]
    output = await asyncio.to_thread(run_in_a_terminal, argv, b"stty size; tty; echo done-$((6*7)); exit\n")
    assert b"done-42" in output, output
    assert b"/dev/pts/" in output, output  # a real terminal inside the container
    assert b"37 91" in output, output  # the terminal's size reached the container's terminal


async def test_kubectl_attach_sees_the_containers_output(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "talker", CHATTY)
    attached = edge.popen("attach", "talker")
    assert attached.stdout is not None
    lines = [attached.stdout.readline() for _ in range(3)]
    attached.kill()
    attached.communicate(timeout=10)
    assert all(line.startswith(b"line-") for line in lines), lines


async def test_kubectl_port_forward_reaches_a_port_of_the_pod(kube: Kube, edge: Edge) -> None:
    pod_port, local = free_port(), free_port()
    await run_pod(
        kube, edge, "web", f"mkdir -p /www && echo served-by-pod > /www/index.html && httpd -f -p {pod_port} -h /www"
    )
    forwarder = edge.popen("port-forward", "pod/web", f"{local}:{pod_port}")
    try:
        assert forwarder.stdout is not None
        assert b"Forwarding from" in forwarder.stdout.readline()

        def fetch() -> bytes:
            with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                return data

        answer = await asyncio.to_thread(fetch)
        assert b"served-by-pod" in answer, answer
    finally:
        forwarder.kill()
        forwarder.communicate(timeout=10)


async def test_kubectl_cp_both_ways_keeps_every_byte(kube: Kube, edge: Edge, tmp_path: Path) -> None:
    await run_pod(kube, edge, "store", "sleep 3600")
    data = os.urandom(3 * 1024 * 1024)
    (tmp_path / "blob").write_bytes(data)
    up = edge.kubectl("cp", str(tmp_path / "blob"), f"{edge.namespace}/store:/tmp/blob", timeout=120)
    assert up.returncode == 0, up.stderr
    inside = edge.kubectl("exec", "store", "--", "sha256sum", "/tmp/blob").stdout.split()[0].decode()
    assert inside == hashlib.sha256(data).hexdigest()
    down = edge.kubectl("cp", f"{edge.namespace}/store:/tmp/blob", str(tmp_path / "back"), timeout=120)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == inside


async def test_the_node_proxy_serves_stats_summary_pods_and_healthz(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "busy", CHATTY)
    base = ["get", "--raw", f"/api/v1/nodes/{edge.node}/proxy"]
    healthz = edge.kubectl(*base[:2], base[2] + "/healthz")
    assert healthz.stdout == b"ok", (healthz.stderr, edge.process.tail(5))
    summary = orjson.loads(edge.kubectl(*base[:2], base[2] + "/stats/summary").stdout)
    assert summary["node"]["nodeName"] == edge.node and summary["node"]["memory"]["workingSetBytes"] > 0
    [pod] = [p for p in summary["pods"] if p["podRef"]["name"] == "busy"]
    assert pod["podRef"]["namespace"] == edge.namespace and pod["containers"][0]["name"] == "main"
    pods = orjson.loads(edge.kubectl(*base[:2], base[2] + "/pods").stdout)
    assert "busy" in [p["metadata"]["name"] for p in pods["items"]]
    metrics = edge.kubectl(*base[:2], base[2] + "/metrics/resource").stdout.decode()
    assert f'container_cpu_usage_seconds_total{{container="main",namespace="{edge.namespace}",pod="busy"}}' in metrics


def stream_request(
    address: str, port: int, path: str, *, pki_dir: Path, cert: tuple[Path, Path] | None, token: str = ""
) -> tuple[int, bytes]:
    """One request straight to the stream server at ``address`` (as the API server would reach a node there)."""
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\n{auth}\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    if not data:  # TLS 1.3: a refused client certificate shows as the connection closing after the handshake
        raise ConnectionError("closed without an answer")
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_the_stream_server_lets_in_only_the_api_server_and_authorized_users(
    kube: Kube, edge: Edge, cloud: CloudCoreProcess, pki: Pki, tmp_path: Path
) -> None:
    plane_pki = edge.control_plane.pki
    address, port = edge.process.node_ip, cloud.stream_port
    api_server = (plane_pki / "apiserver-kubelet-client.crt", plane_pki / "apiserver-kubelet-client.key")
    assert await asyncio.to_thread(stream_request, address, port, "/healthz", pki_dir=plane_pki, cert=api_server) == (
        200,
        b"ok",
    )
    status, body = await asyncio.to_thread(stream_request, address, port, "/healthz", pki_dir=plane_pki, cert=None)
    assert status == 401 and b"Unauthorized" in body
    stranger = Pki(tmp_path / "stranger")  # a certificate from a CA the stream server does not know
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(
            stream_request, address, port, "/healthz", pki_dir=plane_pki, cert=stranger.node_files(edge.node)
        )
    # A node's own certificate (the kubage CA's, trusted for replicas) is an ordinary user: no RBAC, no stream.
    status, body = await asyncio.to_thread(
        stream_request, address, port, "/stats/summary", pki_dir=plane_pki, cert=pki.node_files("edge-other")
    )
    assert status == 403 and b"system:node:edge-other" in body
    # A bearer token is reviewed and authorized per request (SubjectAccessReview on nodes/<subresource>).
    await kube.request(
        "POST", f"/api/v1/namespaces/{edge.namespace}/serviceaccounts", body={"metadata": {"name": "ops"}}
    )
    minted = await kube.request(
        "POST",
        f"/api/v1/namespaces/{edge.namespace}/serviceaccounts/ops/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )
    token = minted["status"]["token"]
    status, body = await asyncio.to_thread(
        stream_request, address, port, "/healthz", pki_dir=plane_pki, cert=None, token=token
    )
    assert status == 403 and b"nodes/healthz" in body, body
    role = f"stream-{edge.namespace}"
    await kube.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        body={
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes/healthz"], "verbs": ["get"]}],
        },
    )
    await kube.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        body={
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "ops", "namespace": edge.namespace}],
        },
    )
    # a fresh identity's answer is not cached yet: the grant applies at once to a new token user
    await kube.request(
        "POST", f"/api/v1/namespaces/{edge.namespace}/serviceaccounts", body={"metadata": {"name": "ops2"}}
    )
    await kube.request(
        "PATCH",
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{role}",
        content_type="application/merge-patch+json",
        body={"subjects": [{"kind": "ServiceAccount", "name": "ops2", "namespace": edge.namespace}]},
    )
    minted2 = await kube.request(
        "POST",
        f"/api/v1/namespaces/{edge.namespace}/serviceaccounts/ops2/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )

    async def granted() -> bool:
        got = await asyncio.to_thread(
            stream_request, address, port, "/healthz", pki_dir=plane_pki, cert=None, token=minted2["status"]["token"]
        )
        return got == (200, b"ok")

    await eventually(granted, timeout=10)


async def test_a_stream_to_a_disconnected_node_fails_at_once_naming_it(kube: Kube, edge: Edge) -> None:
    await run_pod(kube, edge, "gone", "sleep 3600")
    edge.process.stop()
    await eventually(lambda: _node_connected_nowhere(edge), timeout=20)
    started = time.monotonic()
    out = edge.kubectl("logs", "gone", timeout=30)
    assert time.monotonic() - started < 10
    assert out.returncode != 0
    assert f"node {edge.node} is not connected to CloudCore; it was last connected at".encode() in out.stderr, (
        out.stderr
    )
    edge.process.start()  # the fixture stops it again
    await edge.process.wait_ready()


async def _node_connected_nowhere(edge: Edge) -> bool:
    out = edge.kubectl("logs", "gone", "--tail=1", timeout=30)
    print(out.stderr)
    return b"is not connected to CloudCore" in out.stderr


async def test_with_two_replicas_either_one_reaches_every_node(
    kube: Kube, control_plane: ControlPlane, cloud: CloudCoreProcess, containerd: Any, pki: Pki, tmp_path: Path
) -> None:
    second = CloudCoreProcess(tmp_path / "cloudcore-2", kubeconfig=control_plane.kubeconfig, pki=pki)
    second.start()
    try:
        await second.wait_ready()
        first_edge = await start_edge(kube, control_plane, cloud, containerd, pki, tmp_path / "edge-1")
        second_edge = await start_edge(kube, control_plane, second, containerd, pki, tmp_path / "edge-2")
        try:
            await run_pod(kube, first_edge, "on-first", "echo from-first; sleep 3600")
            await run_pod(kube, second_edge, "on-second", "echo from-second; sleep 3600")
            assert first_edge.kubectl("logs", "on-first").stdout == b"from-first\n"
            assert second_edge.kubectl("logs", "on-second").stdout == b"from-second\n"
            # The first replica, asked for the second's node, passes the request on over replica-to-replica TLS.
            plane_pki = control_plane.pki
            api_server = (plane_pki / "apiserver-kubelet-client.crt", plane_pki / "apiserver-kubelet-client.key")
            path = f"/containerLogs/{second_edge.namespace}/on-second/main"
            got = await asyncio.to_thread(
                stream_request, "127.0.0.1", cloud.stream_port, path, pki_dir=plane_pki, cert=api_server
            )
            assert got == (200, b"from-second\n")
            assert "stream_forwarded" in cloud.tail(200)
        finally:
            for started in (first_edge, second_edge):
                assert started.process.stop() == 0, started.process.tail()
    finally:
        second.stop()


async def test_keadm_ctl_shows_pods_logs_and_execs_on_the_gateway_with_the_cloud_gone(
    kube: Kube, edge: Edge, cloud: CloudCoreProcess
) -> None:
    await run_pod(kube, edge, "local", "echo from-local; sleep 3600")
    await eventually(lambda: b"from-local" in edge.kubectl("logs", "local").stdout, timeout=20)
    cloud.stop()  # the cloud is gone: everything below works from the store and the runtime alone

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        keadm = str(Path(sys.executable).parent / "keadm")
        return subprocess.run(
            [keadm, "ctl", "--config", str(edge.process.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=production_env(),
        )

    listed = await asyncio.to_thread(ctl, "get", "pods", "-n", edge.namespace)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert listed.stdout.split("\n")[1].split()[:3] == ["local", "1/1", "Running"]
    logs = await asyncio.to_thread(ctl, "logs", "local", "-n", edge.namespace)
    assert logs.returncode == 0 and logs.stdout == "from-local\n", logs.stderr
    ran = await asyncio.to_thread(ctl, "exec", "local", "-n", edge.namespace, "--", "sh", "-c", "echo hi; exit 4")
    assert (ran.returncode, ran.stdout) == (4, "hi\n"), ran.stderr
    missing = await asyncio.to_thread(ctl, "logs", "nosuch", "-n", edge.namespace)
    assert missing.returncode == 1 and 'pod "nosuch" not found' in missing.stderr
