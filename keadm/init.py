"""`keadm init`: install CloudCore into the cluster of a kubeconfig.

KubeEdge renders a Helm chart; here the manifests are the plain YAML files in ``deploy/`` (the same files
``kubectl apply -f deploy/`` would take), with two values filled in: the advertise addresses in the ConfigMap
and the image in the Deployment. Everything is applied with server-side apply under the field manager
``keadm``, so running ``keadm init`` again is harmless, and a field someone else changed since (a
``kubectl edit``) is reported as a conflict instead of being silently overwritten, unless ``--force``.

The CA is not a manifest: it is generated in the cluster (``cloudcore.certs.ensure_ca``), created at most
once, so that ``keadm init`` and CloudCore replicas starting at the same time agree on one CA.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cloudcore.certs import CA_SECRET, NAMESPACE, CaSecretError, ensure_ca, load_ca
from cloudcore.kube import Conflict, Forbidden, Kube, KubeError, KubeUnavailable
from cloudcore.kubeconfig import KubeconfigError
from common.cli import package_version
from common.logging import configure_logging
from keadm import paths

FIELD_MANAGER = "keadm"
APPLY_PATCH = "application/apply-patch+yaml"
CRD_ESTABLISHED_TIMEOUT_S = 30.0

# The install order: a namespace before what lives in it, CRDs before anything could use them, RBAC before the
# Deployment whose pods run as its ServiceAccount, the ConfigMap before the pods that mount it.
MANIFESTS: tuple[tuple[str, str], ...] = (
    ("namespace", "namespace.yaml"),
    ("CRDs", "crds/*.yaml"),
    ("RBAC", "rbac.yaml"),
    ("ConfigMap", "configmap.yaml"),
    ("Service", "service.yaml"),
    ("Deployment", "deployment.yaml"),
)

# (apiVersion, kind) → (resource, namespaced): the kinds deploy/ uses. A kind missing here is an error rather
# than a guessed plural, and tests/integration/test_deploy.py applies every file so a new kind is noticed.
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
}

_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
_ADVERTISE_LINE = re.compile(r"^(?P<indent>[ ]*)advertiseAddress: \[\][ ]*$", re.MULTILINE)

T = TypeVar("T")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (cloudcore.yaml inside the ConfigMap) as literal blocks, readable as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[Manifest]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


class ManifestError(Exception):
    """deploy/ is missing or holds something keadm cannot apply."""


class StepError(Exception):
    """One install step failed; the message is the one line the operator sees."""


Manifest = dict[str, Any]


@dataclass(frozen=True)
class Group:
    label: str
    objects: list[Manifest]


# --- manifests --------------------------------------------------------------------------------------------


def deploy_dir() -> Path:
    found = paths.deploy_dir()
    if found is None or not (found / "deployment.yaml").is_file():
        raise ManifestError("the CloudCore manifests (deploy/) are not installed with this keadm")
    return found


def manifest_files(directory: Path) -> list[tuple[str, list[Path]]]:
    groups = []
    for label, pattern in MANIFESTS:
        paths = sorted(directory.glob(pattern))
        if not paths:
            raise ManifestError(f"{directory / pattern}: no such manifest")
        groups.append((label, paths))
    return groups


def load_documents(path: Path) -> list[Manifest]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("kind") or not (doc.get("metadata") or {}).get("name"):
            raise ManifestError(f"{path}: every document needs a kind and metadata.name")
    return docs


def load_manifests(directory: Path | None = None) -> list[Group]:
    return [
        Group(label, [doc for path in paths for doc in load_documents(path)])
        for label, paths in manifest_files(directory or deploy_dir())
    ]


def object_path(obj: Manifest) -> str:
    """The object's URL path on the API server, e.g. /apis/apps/v1/namespaces/kubeedge/deployments/cloudcore."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    try:
        resource, namespaced = RESOURCES[(api_version, kind)]
    except KeyError:
        raise ManifestError(f"keadm does not know how to apply {api_version} {kind}") from None
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    meta = obj["metadata"]
    if namespaced:
        if not meta.get("namespace"):
            raise ManifestError(f"{kind} {meta['name']} has no metadata.namespace")
        base += f"/namespaces/{meta['namespace']}"
    return f"{base}/{resource}/{meta['name']}"


def describe(obj: Manifest) -> str:
    meta = obj["metadata"]
    name = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
    return f"{obj['kind']} {name}"


def parse_addresses(text: str) -> list[str]:
    """Comma-separated IP addresses or DNS names, in the order given, without duplicates."""
    addresses: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            item = str(ipaddress.ip_address(item))
        except ValueError:
            if not _DNS_NAME.match(item.lower()):
                raise ValueError(f"{item!r} is neither an IP address nor a DNS name") from None
            item = item.lower()
        if item not in addresses:
            addresses.append(item)
    return addresses


def render(groups: list[Group], *, advertise: list[str], image: str) -> list[Group]:
    """The manifests with the advertise addresses in cloudcore.yaml and ``image`` in the Deployment."""
    out = []
    for group in groups:
        objects = []
        for obj in group.objects:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "cloudcore":
                objects.append(_with_advertise(obj, advertise))
            elif obj["kind"] == "Deployment" and obj["metadata"]["name"] == "cloudcore":
                objects.append(_with_image(obj, image))
            else:
                objects.append(obj)
        out.append(Group(group.label, objects))
    return out


def _with_advertise(obj: Manifest, advertise: list[str]) -> Manifest:
    # A textual edit rather than load-and-dump, so the comments in cloudcore.yaml reach the cluster and an
    # operator reading `kubectl get configmap -o yaml` still sees why each value is what it is.
    text = obj["data"]["cloudcore.yaml"]
    edited, count = _ADVERTISE_LINE.subn(lambda m: f"{m['indent']}advertiseAddress: {json.dumps(advertise)}", text)
    if count != 1:
        raise ManifestError("configmap.yaml: cloudcore.yaml needs exactly one line 'advertiseAddress: []' to fill in")
    parsed = yaml.safe_load(edited)
    if parsed["modules"]["cloudHub"]["advertiseAddress"] != advertise:
        raise ManifestError("configmap.yaml: the advertiseAddress line is not modules.cloudHub.advertiseAddress")
    return {**obj, "data": {**obj["data"], "cloudcore.yaml": edited}}


def _with_image(obj: Manifest, image: str) -> Manifest:
    spec = obj["spec"]["template"]["spec"]
    if not any(c["name"] == "cloudcore" for c in spec["containers"]):
        raise ManifestError("deployment.yaml: no container named cloudcore")
    containers = [{**c, "image": image} if c["name"] == "cloudcore" else c for c in spec["containers"]]
    template = {**obj["spec"]["template"], "spec": {**spec, "containers": containers}}
    return {**obj, "spec": {**obj["spec"], "template": template}}


# --- the cluster ------------------------------------------------------------------------------------------


async def connect(kubeconfig: str) -> Kube:
    """A client for the kubeconfig's cluster, after checking the API server answers at all."""
    if not await asyncio.to_thread(Path(kubeconfig).is_file):
        raise StepError(f"kubeconfig {kubeconfig} not found (pass --kube-config or set KUBECONFIG)")
    try:
        kube = await Kube.connect(kubeconfig)
    except (KubeconfigError, OSError) as exc:
        raise StepError(f"kubeconfig {kubeconfig} cannot be used: {exc}") from None
    try:
        await kube.get("/version")
    except KubeUnavailable as exc:
        await kube.close()
        raise StepError(f"cannot reach the API server at {kube.host}: {exc}") from None
    except KubeError as exc:
        await kube.close()
        raise StepError(f"the API server at {kube.host} refused the request: {exc}") from None
    return kube


async def guarded(what: str, call: Awaitable[T]) -> T:
    """``call``, with any API or connection failure turned into one line naming ``what`` failed."""
    try:
        return await call
    except Forbidden as exc:
        raise StepError(f"{what}: forbidden: {exc}") from None
    except Conflict as exc:
        raise StepError(
            f"{what}: conflict: {exc}. Another field manager changed a field keadm sets; "
            "rerun with --force to take it back"
        ) from None
    except KubeUnavailable as exc:
        raise StepError(f"{what}: lost the API server: {exc}") from None
    except KubeError as exc:
        raise StepError(f"{what}: {exc}") from None


async def apply(kube: Kube, obj: Manifest, *, force: bool, dry_run: bool = False) -> Any:
    query: list[tuple[str, Any]] = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
    if dry_run:
        query.append(("dryRun", "All"))
    # Strict: a misspelt field in deploy/ is refused rather than dropped without a word.
    query.append(("fieldValidation", "Strict"))
    return await kube.request("PATCH", object_path(obj), query=query, body=obj, content_type=APPLY_PATCH)


async def wait_established(kube: Kube, names: list[str]) -> None:
    pending = set(names)
    deadline = time.monotonic() + CRD_ESTABLISHED_TIMEOUT_S
    while pending:
        for name in sorted(pending):
            crd = await kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            # A CRD just created may show "conditions": null until the API server has looked at it.
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise StepError(
                    f"CRDs not established after {CRD_ESTABLISHED_TIMEOUT_S:.0f}s: {', '.join(sorted(pending))}"
                )
            await asyncio.sleep(0.2)


# --- the command ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kube-config",
        default=paths.default_kubeconfig(),
        metavar="PATH",
        help="kubeconfig of the cluster to install into (default: $KUBECONFIG, else ~/.kube/config)",
    )
    parser.add_argument(
        "--advertise-address",
        default="",
        metavar="ADDRS",
        help="comma-separated IP addresses or DNS names edges use to reach CloudCore (the Service's NodePort, "
        "LoadBalancer or host address); they go into CloudCore's serving certificate. Required unless --dry-run",
    )
    parser.add_argument(
        "--image-repository", default="kubage", metavar="REPO", help="where the cloudcore image comes from"
    )
    parser.add_argument(
        "--kubeedge-version",
        default=package_version(),
        metavar="VERSION",
        help="the cloudcore image tag (default: this keadm's version)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the manifests that would be applied, as YAML, and contact no cluster",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="take over fields another field manager changed since the last 'keadm init' (server-side apply force)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"keadm init: {message}\n")
    return 1


def _tick() -> str:
    encoding = (sys.stdout.encoding or "").lower().replace("-", "")
    return "✓" if encoding.startswith("utf") else "ok"


def _settings(args: argparse.Namespace) -> tuple[list[str], str]:
    """The advertise addresses and the image, checked."""
    try:
        advertise = parse_addresses(args.advertise_address)
    except ValueError as exc:
        raise StepError(f"--advertise-address: {exc}") from None
    if not advertise and not args.dry_run:
        # Without them the serving certificate names no address an edge dials, and every join fails with
        # "x509: certificate is valid for ..., not ..." (KubeEdge #2029); better to refuse now.
        raise StepError("--advertise-address is required: the addresses edges use to reach CloudCore")
    if args.kubeedge_version in ("", "unknown"):
        raise StepError("cannot tell kubage's version; pass --kubeedge-version")
    return advertise, f"{args.image_repository.rstrip('/')}/cloudcore:{args.kubeedge_version}"


def run(args: argparse.Namespace) -> int:
    try:
        advertise, image = _settings(args)
        groups = render(load_manifests(), advertise=advertise, image=image)
    except (StepError, ManifestError) as exc:
        return _fail(str(exc))
    if args.dry_run:
        if not advertise:
            sys.stderr.write("keadm init: no --advertise-address given: advertiseAddress is left empty\n")
        # The CA Secret is not among them: it is generated in the cluster, never printed.
        sys.stdout.write(to_yaml([o for g in groups for o in g.objects]))
        return 0
    # keadm prints its own progress; the cloud code it reuses (ensure_ca) logs for a server's operator.
    configure_logging("warning", stream=sys.stderr)
    try:
        return asyncio.run(_install(args.kube_config, groups, advertise=advertise, image=image, force=args.force))
    except StepError as exc:
        return _fail(str(exc))


async def _install(kubeconfig: str, groups: list[Group], *, advertise: list[str], image: str, force: bool) -> int:
    tick = _tick()

    def done(line: str) -> None:
        print(f"{tick} {line}", flush=True)

    kube = await connect(kubeconfig)
    try:
        for group in groups:
            for obj in group.objects:
                await guarded(f"applying {describe(obj)}", apply(kube, obj, force=force))
            if group.label == "CRDs":
                names = [o["metadata"]["name"] for o in group.objects]
                await guarded("waiting for the CRDs", wait_established(kube, names))
                done(f"CRDs applied and established ({len(names)}): {', '.join(names)}")
            elif group.label == "ConfigMap":
                done(f"ConfigMap {NAMESPACE}/cloudcore applied (advertiseAddress: {', '.join(advertise)})")
            elif group.label == "Deployment":
                replicas = group.objects[0]["spec"].get("replicas", 1)
                done(f"Deployment {NAMESPACE}/cloudcore applied ({image}, {replicas} replicas)")
            elif len(group.objects) == 1:
                done(f"{describe(group.objects[0])} applied")
            else:
                done(f"{group.label} applied ({len(group.objects)} objects)")
        secret = f"Secret {NAMESPACE}/{CA_SECRET}"
        try:
            existing = await guarded(f"reading {secret}", load_ca(kube))
            ca = existing if existing is not None else await guarded(f"creating {secret}", ensure_ca(kube))
        except CaSecretError as exc:
            raise StepError(str(exc)) from None
        state = "already there" if existing is not None else "created"
        done(f"CA in Secret {NAMESPACE}/{CA_SECRET} ({state}); SHA-256 fingerprint {ca.fingerprint}")
    finally:
        await kube.close()
    host = f"[{advertise[0]}]" if ":" in advertise[0] else advertise[0]  # an IPv6 address needs brackets
    print(
        "\nCloudCore is installed; its pods start once the image can be pulled.\n"
        f"Next: create a join token with\n  keadm gettoken --kube-config {kubeconfig}\n"
        f"then on each gateway (with the port your Service exposure maps to 10000):\n"
        f"  keadm join --cloudcore-ipport {host}:10000 --token <token>"
    )
    return 0
