"""`keadm init`, run as an operator runs it, against the real API server."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcore.certs import load_ca
from cloudcore.kube import Kube
from common.pki import CertificateAuthority, cert_pem, key_pem
from scripts.harness.cluster import ControlPlane
from scripts.harness.procs import free_port

KEADM = Path(sys.executable).parent / "keadm"
ADVERTISE = "192.0.2.10,cloud.example.com"
CLOUDCORE_SA = "system:serviceaccount:kubeedge:cloudcore"

DEPLOYMENT = "/apis/apps/v1/namespaces/kubeedge/deployments/cloudcore"
CONFIGMAP = "/api/v1/namespaces/kubeedge/configmaps/cloudcore"
INSTALLED = [
    "/api/v1/namespaces/kubeedge",
    "/api/v1/namespaces/kubeedge/serviceaccounts/cloudcore",
    "/api/v1/namespaces/kubeedge/services/cloudcore",
    CONFIGMAP,
    DEPLOYMENT,
    "/apis/rbac.authorization.k8s.io/v1/clusterroles/cloudcore",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cloudcore",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kubeedge/roles/cloudcore",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kubeedge/rolebindings/cloudcore",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-node-lease/roles/cloudcore",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-node-lease/rolebindings/cloudcore",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/devices.devices.kubeedge.io",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/devicemodels.devices.kubeedge.io",
    "/api/v1/namespaces/kubeedge/secrets/casecret",
]


@pytest.fixture(scope="module", autouse=True)
def uninstall_afterwards(control_plane: ControlPlane) -> Iterator[None]:
    """The session's cluster is shared: take CloudCore (and the CA Secret keadm init created) out again, so
    that a later test starting from "no CA yet" still does."""
    yield
    out = subprocess.run(
        [str(KEADM), "reset", "--force", "--kube-config", str(control_plane.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def keadm(*args: str, stdin: int | None = asyncio.subprocess.DEVNULL) -> Result:
    proc = await asyncio.create_subprocess_exec(
        str(KEADM),
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def init(plane: ControlPlane, *extra: str) -> Result:
    return await keadm("init", "--kube-config", str(plane.kubeconfig), "--advertise-address", ADVERTISE, *extra)


def kubeconfig(path: Path, server: str, user: dict[str, str], ca: bytes | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


async def test_init_installs_cloudcore_and_a_second_run_changes_nothing(
    control_plane: ControlPlane, kube: Kube
) -> None:
    first = await init(control_plane)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # progress is keadm's own lines, not the reused cloud code's logs
    assert "CRDs applied and established (5)" in first.stdout  # devices, device models; Sedna's three
    assert f"keadm gettoken --kube-config {control_plane.kubeconfig}" in first.stdout
    deployment = await kube.get(DEPLOYMENT)
    generation = deployment["metadata"]["generation"]

    second = await init(control_plane)
    assert second.returncode == 0, second.stderr
    assert "(already there)" in second.stdout

    for path in INSTALLED:
        await kube.get(path)  # raises KubeError 404 for anything missing
    ca = await load_ca(kube)
    assert ca is not None
    # The fingerprint an operator compares with the one a join pins, the same on both runs.
    assert f"fingerprint {ca.fingerprint}" in first.stdout
    assert f"fingerprint {ca.fingerprint}" in second.stdout

    deployment = await kube.get(DEPLOYMENT)
    assert deployment["metadata"]["generation"] == generation  # re-applying the same spec is no change
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("kubage/cloudcore:")
    managers = {m["manager"] for m in deployment["metadata"]["managedFields"]}
    assert "keadm" in managers
    settings = yaml.safe_load((await kube.get(CONFIGMAP))["data"]["cloudcore.yaml"])
    assert settings["modules"]["cloudHub"]["advertiseAddress"] == ["192.0.2.10", "cloud.example.com"]


async def test_image_repository_and_version_set_the_image(control_plane: ControlPlane, kube: Kube) -> None:
    out = await init(control_plane, "--image-repository", "registry.example.com/edge/", "--kubeedge-version", "9.9.9")
    try:
        assert out.returncode == 0, out.stderr
        (container,) = (await kube.get(DEPLOYMENT))["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.example.com/edge/cloudcore:9.9.9"
    finally:
        assert (await init(control_plane)).returncode == 0  # back to the default image for the other tests


async def test_cloudcore_may_do_what_it_needs_and_no_more(control_plane: ControlPlane, kube: Kube) -> None:
    """The RBAC keadm installs, asked of the API server's own authorizer for the cloudcore ServiceAccount."""
    assert (await init(control_plane)).returncode == 0

    async def allowed(verb: str, resource: str, namespace: str = "", group: str = "", sub: str = "") -> bool:
        attributes = {"verb": verb, "resource": resource, "group": group, "subresource": sub}
        if namespace:
            attributes["namespace"] = namespace
        review = await kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": CLOUDCORE_SA, "groups": ["system:serviceaccounts"], "resourceAttributes": attributes},
            },
        )
        return bool(review["status"].get("allowed"))

    needed = [
        ("watch", "nodes", "", "", ""),
        ("create", "nodes", "", "", ""),
        ("patch", "nodes", "", "", "status"),
        ("list", "pods", "", "", ""),
        ("delete", "pods", "shop-floor", "", ""),
        ("patch", "pods", "shop-floor", "", "status"),
        ("watch", "secrets", "", "", ""),
        ("watch", "configmaps", "", "", ""),
        ("create", "leases", "kube-node-lease", "coordination.k8s.io", ""),
        ("update", "leases", "kube-node-lease", "coordination.k8s.io", ""),
        ("watch", "devices", "", "devices.kubeedge.io", ""),
        ("patch", "devices", "shop-floor", "devices.kubeedge.io", "status"),
        ("create", "secrets", "kubeedge", "", ""),
        ("create", "configmaps", "kubeedge", "", ""),
        ("delete", "configmaps", "kubeedge", "", ""),
        ("create", "tokenreviews", "", "authentication.k8s.io", ""),  # the stream server's client checks
        ("create", "subjectaccessreviews", "", "authorization.k8s.io", ""),
        ("patch", "leases", "kube-node-lease", "coordination.k8s.io", ""),  # the session directory annotation
        # the global manager: a federated job's pods, and the status of jobs, Datasets and Models
        ("create", "pods", "shop-floor", "", ""),
        ("watch", "federatedlearningjobs", "", "sedna.io", ""),
        ("patch", "federatedlearningjobs", "shop-floor", "sedna.io", "status"),
        ("update", "federatedlearningjobs", "shop-floor", "sedna.io", "finalizers"),
        ("patch", "datasets", "shop-floor", "sedna.io", "status"),
        ("patch", "models", "shop-floor", "sedna.io", "status"),
    ]
    for verb, resource, namespace, group, sub in needed:
        assert await allowed(verb, resource, namespace, group, sub), f"cloudcore cannot {verb} {resource}/{sub}"
    refused = [
        ("patch", "federatedlearningjobs", "shop-floor", "sedna.io", ""),  # status only, never the spec
        ("create", "datasets", "shop-floor", "sedna.io", ""),
        ("update", "secrets", "kubeedge", "", ""),  # the CA Secret is created once, never replaced
        ("delete", "secrets", "kubeedge", "", ""),
        ("create", "secrets", "shop-floor", "", ""),
        ("delete", "configmaps", "shop-floor", "", ""),
        ("patch", "devices", "shop-floor", "devices.kubeedge.io", ""),  # status only, never the spec
        ("delete", "nodes", "", "", ""),
        ("create", "leases", "kube-system", "coordination.k8s.io", ""),  # others' leader-election leases
        ("create", "clusterrolebindings", "", "rbac.authorization.k8s.io", ""),
    ]
    for verb, resource, namespace, group, sub in refused:
        assert not await allowed(verb, resource, namespace, group, sub), f"cloudcore may {verb} {resource}"


async def test_dry_run_prints_every_manifest_and_contacts_no_cluster(tmp_path: Path) -> None:
    # A cluster that is not there: if keadm tried to reach it, the run would fail.
    unreachable = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{free_port()}", {"token": "x"})
    out = await keadm(
        "init",
        "--dry-run",
        "--kube-config",
        str(unreachable),
        "--advertise-address",
        "192.0.2.10",
        "--kubeedge-version",
        "1.2.3",
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace"
    assert kinds.count("CustomResourceDefinition") == 5  # devices, device models; Sedna's three kinds
    assert kinds.index("CustomResourceDefinition") < kinds.index("Deployment")
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
    } <= set(kinds)
    assert "Secret" not in kinds  # the CA is generated in the cluster, never printed
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    settings = yaml.safe_load(configmap["data"]["cloudcore.yaml"])
    assert settings["modules"]["cloudHub"]["advertiseAddress"] == ["192.0.2.10"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "kubage/cloudcore:1.2.3"


async def test_without_advertise_address_nothing_is_installed(tmp_path: Path) -> None:
    out = await keadm("init", "--kube-config", str(tmp_path / "nowhere"))
    assert out.returncode == 1
    assert "--advertise-address is required" in out.stderr
    bad = await keadm("init", "--kube-config", str(tmp_path / "nowhere"), "--advertise-address", "not an address")
    assert bad.returncode == 1
    assert "neither an IP address nor a DNS name" in bad.stderr


async def test_an_unreachable_api_server_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    config = kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}", {"token": "x"})
    out = await keadm("init", "--kube-config", str(config), "--advertise-address", "192.0.2.10")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"keadm init: cannot reach the API server at https://127.0.0.1:{port}")


async def test_a_user_without_rights_is_told_what_was_forbidden(control_plane: ControlPlane, tmp_path: Path) -> None:
    pki = control_plane.state_dir / "pki"
    cluster_ca = CertificateAuthority.from_pem((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes())
    key, cert = cluster_ca.issue_node("nobody")  # authenticated, but no RBAC binding names it
    server = yaml.safe_load(control_plane.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    user = {
        "client-certificate-data": base64.b64encode(cert_pem(cert)).decode(),
        "client-key-data": base64.b64encode(key_pem(key)).decode(),
    }
    config = kubeconfig(tmp_path / "kubeconfig", server, user, ca=(pki / "ca.crt").read_bytes())
    out = await keadm("init", "--kube-config", str(config), "--advertise-address", "192.0.2.10")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("keadm init: applying Namespace kubeedge: forbidden")


async def test_a_field_changed_by_someone_else_needs_force(control_plane: ControlPlane, kube: Kube) -> None:
    assert (await init(control_plane)).returncode == 0
    # An operator scales by hand: the replicas field now belongs to another field manager.
    await kube.request(
        "PATCH",
        DEPLOYMENT,
        query=[("fieldManager", "kubectl-scale")],
        body={"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )
    try:
        refused = await init(control_plane)
        assert refused.returncode == 1
        assert "applying Deployment kubeedge/cloudcore: conflict" in refused.stderr
        assert "--force" in refused.stderr
        assert (await kube.get(DEPLOYMENT))["spec"]["replicas"] == 3

        forced = await init(control_plane, "--force")
        assert forced.returncode == 0, forced.stderr
        assert (await kube.get(DEPLOYMENT))["spec"]["replicas"] == 2
    finally:
        # Whatever happened above, leave the install as keadm made it for the tests after this one.
        assert (await init(control_plane, "--force")).returncode == 0
