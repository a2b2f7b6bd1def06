"""Joining an edge node with ``keadm gettoken`` and ``keadm join`` against the real cloudcore command, with its CA
in the cluster's Secret as deployed, and the certificate service behind it.

A valid token gives a connected node holding a certificate for its own name only; expired, forged, reused and
wrong-node tokens are refused with a message that says which, and leave nothing behind; one node's certificate
cannot renew (or connect) as another's; a rotated certificate keeps the node connected and its pods running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from cloudcore.certs import CA_SECRET, NAMESPACE, ensure_ca, load_ca
from cloudcore.kube import Kube, KubeError
from common.certclient import CertServiceError, request_certificate
from common.pki import new_csr, new_key
from keadm.paths import EdgeLayout
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.procs import free_port, production_env
from scripts.harness.services import CloudCoreProcess, Service
from tests.tunnel import eventually

pytestmark = pytest.mark.kube

BIN = Path(sys.executable).parent


def keadm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "keadm"), *argv], capture_output=True, text=True, timeout=60, check=False, env=production_env()
    )


class JoinedEdge(Service):
    """``edgecore`` run with the configuration ``keadm join --root-dir`` wrote."""

    def __init__(self, layout: EdgeLayout, monitor_port: int) -> None:
        self.layout = layout
        super().__init__(layout.root / "run", command="edgecore", monitor_port=monitor_port)

    def settings(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.layout.config.read_text()))


def join(cloud: CloudCoreProcess, root: Path, node: str, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return keadm(
        "join",
        "--cloudcore-ipport",
        f"127.0.0.1:{cloud.port}",
        "--certport",
        str(cloud.cert_port),
        "--token",
        token,
        "--edgenode-name",
        node,
        "--root-dir",
        str(root),
        "--set",
        "modules.eventBus.enable=false",
        "--set",
        f"modules.edged.healthzBindAddress=127.0.0.1:{free_port()}",
        "--set",
        "modules.edgeHub.heartbeat=2",
        *extra,
    )


def gettoken(control_plane: ControlPlane, *extra: str) -> str:
    out = keadm("gettoken", "--kube-config", str(control_plane.kubeconfig), *extra)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}\.[\w-]+\.[\w-]+", token), token
    return token


def node_name() -> str:
    return f"join-{uuid.uuid4().hex[:8]}"


async def node_exists(kube: Kube, node: str) -> bool:
    return await kube.get_or_none(f"/api/v1/nodes/{node}") is not None


def start_edge(layout: EdgeLayout) -> JoinedEdge:
    config = yaml.safe_load(layout.config.read_text())
    port = int(config["modules"]["edged"]["healthzBindAddress"].rsplit(":", 1)[1])
    edge = JoinedEdge(layout, port)
    edge.start()
    return edge


async def test_join_gives_a_connected_node_with_a_certificate_for_its_own_name(
    control_plane: ControlPlane, cloud_from_secret: CloudCoreProcess, kube: Kube, tmp_path: Path
) -> None:
    node = node_name()
    token = gettoken(control_plane, "--node", node, "--ttl", "10m")
    out = join(cloud_from_secret, tmp_path / "root", node, token, "--labels", "site=lab,tier=edge")
    assert out.returncode == 0, out.stderr
    assert "[1/4] CA pinned" in out.stdout and "[4/4]" in out.stdout

    layout = EdgeLayout(tmp_path / "root")
    cert = x509.load_pem_x509_certificate(layout.cert_file.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{node}"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)  # no other names to stand for
    ca = await load_ca(kube)
    assert ca is not None and layout.ca_file.read_bytes() == ca.cert_pem
    assert layout.key_file.stat().st_mode & 0o077 == 0
    unit = layout.unit_file.read_text()
    assert "Type=notify" in unit
    assert f"ExecStart={BIN / 'edgecore'} --config {layout.config}" in unit

    edge = start_edge(layout)
    try:
        await edge.wait_ready()
        await eventually(lambda: node_exists(kube, node), timeout=20)
        labels = (await kube.get(f"/api/v1/nodes/{node}"))["metadata"]["labels"]
        assert labels["site"] == "lab" and labels["tier"] == "edge"
    finally:
        edge.stop()

    again = join(cloud_from_secret, tmp_path / "root", node, token)
    assert again.returncode == 1 and "already joined" in again.stderr


@pytest.mark.parametrize("case", ["expired", "forged", "reused", "wrong-node", "wrong-ca"])
async def test_bad_tokens_are_refused_and_leave_nothing_behind(
    control_plane: ControlPlane, cloud_from_secret: CloudCoreProcess, tmp_path: Path, case: str
) -> None:
    node = node_name()
    if case == "expired":
        token = gettoken(control_plane, "--node", node, "--ttl", "1s")
        await asyncio.sleep(1.5)
        expected = "token expired"
    elif case == "forged":
        head, claims, signature = gettoken(control_plane, "--ttl", "10m").split(".")
        token = f"{head}.{claims}.{signature[:-4]}AAAA"
        expected = "forged token"
    elif case == "reused":
        token = gettoken(control_plane, "--node", node, "--ttl", "10m")
        first = join(cloud_from_secret, tmp_path / "first", node, token)
        assert first.returncode == 0, first.stderr
        expected = "token already used"
    elif case == "wrong-node":
        token = gettoken(control_plane, "--node", "someone-else", "--ttl", "10m")
        expected = "token is bound to node 'someone-else', not"
    else:
        token = "0" * 64 + "." + gettoken(control_plane).split(".", 1)[1]
        expected = "but the token pins"
    root = tmp_path / "root"
    out = join(cloud_from_secret, root, node, token)
    assert out.returncode == 1, out.stdout
    assert expected in out.stderr, out.stderr
    assert not (root / "etc" / "kubage").exists()
    assert not list(root.glob("etc/.kubage-join-*"))  # no staging dir left either


async def test_one_nodes_certificate_cannot_renew_as_another(
    control_plane: ControlPlane, cloud_from_secret: CloudCoreProcess, tmp_path: Path
) -> None:
    node = node_name()
    assert join(cloud_from_secret, tmp_path / "a", node, gettoken(control_plane, "--node", node)).returncode == 0
    layout = EdgeLayout(tmp_path / "a")
    ca_pem = layout.ca_file.read_bytes()

    async def renew(as_node: str) -> bytes:
        return await request_certificate(
            "127.0.0.1",
            cloud_from_secret.cert_port,
            node=as_node,
            csr_pem=new_csr(new_key(), as_node),
            ca_pem=ca_pem,
            client_cert=(layout.cert_file, layout.key_file),
        )

    with pytest.raises(CertServiceError, match=rf"403: the client certificate is for node '{node}', not 'victim'"):
        await renew("victim")
    renewed = x509.load_pem_x509_certificate(await renew(node))  # its own name: fine
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{node}"
    # The subject comes from the token, whatever the CSR asks for.
    key = new_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:victim")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kubernetes.default")]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    other = node_name()
    issued = x509.load_pem_x509_certificate(
        await request_certificate(
            "127.0.0.1",
            cloud_from_secret.cert_port,
            node=other,
            csr_pem=greedy,
            ca_pem=ca_pem,
            token=gettoken(control_plane, "--node", other),
        )
    )
    assert issued.subject.rfc4514_string() == f"CN=system:node:{other},O=system:nodes"
    with pytest.raises(x509.ExtensionNotFound):
        issued.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(CertServiceError, match="401: no join token"):
        await request_certificate(
            "127.0.0.1", cloud_from_secret.cert_port, node="victim", csr_pem=new_csr(new_key(), "victim"), ca_pem=ca_pem
        )


def serial(layout: EdgeLayout) -> int:
    return x509.load_pem_x509_certificate(layout.cert_file.read_bytes()).serial_number


def metric(edge: Service, name: str) -> float:
    for line in edge.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def pod_running(kube: Kube, namespace: str, name: str) -> bool:
    status = (await kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")).get("status") or {}
    containers = status.get("containerStatuses") or []
    return status.get("phase") == "Running" and bool(containers) and "running" in containers[0]["state"]


async def test_rotation_keeps_the_node_connected_and_its_pods_running(
    control_plane: ControlPlane, kube: Kube, containerd: Any, tmp_path: Path
) -> None:
    lifetime_s = 15.0  # rotation falls 10.5-13.5 s after issue
    cloud = CloudCoreProcess(
        tmp_path / "cloudcore", kubeconfig=control_plane.kubeconfig, pki=None, cert_days=lifetime_s / 86400
    )
    cloud.start()
    edge: JoinedEdge | None = None
    try:
        await cloud.wait_ready()
        node = node_name()
        token = gettoken(control_plane, "--node", node)
        out = join(cloud, tmp_path / "root", node, token, "--remote-runtime-endpoint", containerd.endpoint)
        assert out.returncode == 0, out.stderr
        layout = EdgeLayout(tmp_path / "root")
        first = serial(layout)
        first_expiry = x509.load_pem_x509_certificate(layout.cert_file.read_bytes()).not_valid_after_utc.timestamp()
        edge = start_edge(layout)
        await edge.wait_ready()

        namespace = f"t-{uuid.uuid4().hex[:8]}"
        await create_namespace(kube, namespace)
        container = {"name": "main", "image": "localhost/busybox:1.35", "command": ["sleep", "3600"]}
        spec = {"nodeName": node, "hostNetwork": True, "terminationGracePeriodSeconds": 1, "containers": [container]}
        await kube.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", body={"metadata": {"name": "steady"}, "spec": spec}
        )
        await eventually(lambda: pod_running(kube, namespace, "steady"), timeout=30)
        assert metric(edge, "kubage_edgehub_sessions_total") == 1

        await eventually(lambda: serial(layout) != first, timeout=lifetime_s + 5, interval=0.2)
        # renewed on the live session: no reconnect, the pod untouched
        assert metric(edge, "kubage_edgehub_sessions_total") == 1
        assert metric(edge, "kubage_edgehub_connected") == 1
        assert await pod_running(kube, namespace, "steady")

        # Once the first certificate has expired, a new session must use the renewed one: restart CloudCore.
        await asyncio.sleep(max(0.0, first_expiry + 1 - time.time()))
        cloud.stop()
        cloud.start()
        await cloud.wait_ready()
        await eventually(lambda: metric(edge, "kubage_edgehub_sessions_total") == 2, timeout=20, interval=0.2)
        assert metric(edge, "kubage_edgehub_connected") == 1
        pod = await kube.get(f"/api/v1/namespaces/{namespace}/pods/steady")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        assert await pod_running(kube, namespace, "steady")
    finally:
        if edge is not None:
            edge.stop()
        cloud.stop()


async def test_replicas_starting_together_create_one_ca(control_plane: ControlPlane, kube: Kube) -> None:
    """KubeEdge's #5922: two instances racing at first start must not end up with different CAs."""
    with contextlib.suppress(KubeError):
        await kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/secrets/{CA_SECRET}")
    clients = [await Kube.connect(str(control_plane.kubeconfig)) for _ in range(6)]
    try:
        cas = await asyncio.gather(*(ensure_ca(client) for client in clients))
    finally:
        for client in clients:
            await client.close()
    stored = await load_ca(kube)
    assert stored is not None
    assert {ca.fingerprint for ca in cas} == {stored.fingerprint}


def test_the_serving_certificate_names_every_address_edges_dial(cloud_from_secret: CloudCoreProcess) -> None:
    cert = x509.load_pem_x509_certificate((cloud_from_secret.workdir / "certs" / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    assert {"localhost", socket.gethostname()} <= set(names.get_values_for_type(x509.DNSName))
