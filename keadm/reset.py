"""`keadm reset`: undo `keadm join` on this gateway, or, with --kube-config, undo `keadm init` in the cluster.

The edge side stops and disables the systemd unit (only when the layout is the real root: a test's or a demo's
temporary root never touches this machine's systemd), then removes the unit file, /etc/kubage and
/var/lib/kubage. Pods' containers are left to containerd: they belong to the runtime, not to EdgeCore.

The cloud side deletes what `keadm init` applied except the namespace and the CRDs, and also the CA Secret
and the records of used join tokens and issued certificates. The CRDs stay because deleting a CRD deletes
every object of its kind: every Device and DeviceModel in the cluster would go with it, which is not what
"remove CloudCore" means. The namespace stays because it may hold other things, and deleting it would take
those too.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from keadm.paths import EdgeLayout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root-dir",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="the root 'keadm join' installed under (default: /; systemd is only touched for /)",
    )
    parser.add_argument("--force", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--kube-config",
        default=None,
        metavar="PATH",
        help="reset the cloud side instead: remove CloudCore from this kubeconfig's cluster (CRDs and the "
        "namespace are kept)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"keadm reset: {message}\n")
    return 1


def _confirmed(question: str, force: bool) -> bool | None:
    """True to go ahead; False when the operator said no; None when nobody can be asked."""
    if force:
        return True
    if not sys.stdin.isatty():
        return None
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    if args.kube_config is not None:
        question = f"Remove CloudCore from the cluster of {args.kube_config} (CRDs and namespace are kept)?"
    else:
        question = f"Stop EdgeCore and remove its files under {args.root_dir}?"
    confirmed = _confirmed(question, args.force)
    if confirmed is None:
        return _fail("refusing to reset without confirmation: stdin is not a terminal; pass --force")
    if not confirmed:
        print("keadm reset: nothing done")
        return 1
    if args.kube_config is not None:
        return _reset_cloud(args.kube_config)
    return reset_edge(EdgeLayout(args.root_dir))


# --- edge -------------------------------------------------------------------------------------------------


def _disable_unit() -> str | None:
    """``systemctl disable --now edgecore``; an error message, or None (also when the unit was never loaded)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    out = subprocess.run(  # noqa: S603 - a fixed argv, the unit name is ours
        [systemctl, "disable", "--now", "edgecore.service"], capture_output=True, text=True, check=False
    )
    if out.returncode == 0:
        return None
    error = out.stderr.strip()
    # Never installed, already removed by hand, or no systemd running (a container): nothing to stop.
    harmless = ("not loaded", "does not exist", "not found", "not been booted with systemd", "Failed to connect to bus")
    if any(text in error for text in harmless):
        return None
    return f"systemctl disable --now edgecore failed: {error or out.returncode}"


def reset_edge(layout: EdgeLayout) -> int:
    problems: list[str] = []
    if layout.installs_systemd:
        problem = _disable_unit()
        if problem:
            # Go on removing files anyway: a unit that cannot even be stopped is what a reset is for, and the
            # operator sees the line below.
            problems.append(problem)
    removed: list[Path] = []
    for path in (layout.unit_file, layout.etc, layout.var):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
        except OSError as exc:
            problems.append(f"cannot remove {path}: {exc}")
            continue
        removed.append(path)
    if layout.installs_systemd and layout.unit_file in removed and shutil.which("systemctl"):
        # systemd keeps the unit it loaded until told to reread: without this, `systemctl status edgecore`
        # still shows it.
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)  # noqa: S607
    for path in removed:
        print(f"removed {path}")
    if not removed and not problems:
        print(f"nothing to remove under {layout.root}")
    for problem in problems:
        sys.stderr.write(f"keadm reset: {problem}\n")
    return 1 if problems else 0


# --- cloud ------------------------------------------------------------------------------------------------


def _reset_cloud(kubeconfig: str) -> int:
    # The cloud side's code (cloudcore) is loaded only here, so an edge reset on a
    # gateway never imports it.
    from keadm import init  # noqa: PLC0415

    try:
        return asyncio.run(_delete_cloud(kubeconfig))
    except (init.StepError, init.ManifestError) as exc:
        return _fail(str(exc))


async def _delete_cloud(kubeconfig: str) -> int:
    from cloudcore.certs import CA_SECRET, NAMESPACE  # noqa: PLC0415
    from cloudcore.certservice import ISSUED_KIND, RECORD_KIND, RECORD_LABEL  # noqa: PLC0415
    from cloudcore.kube import NotFound  # noqa: PLC0415
    from keadm import init  # noqa: PLC0415

    # What keadm init applied, from the same manifests, in reverse: the Deployment goes first, so its pods are
    # not left running without the RBAC they need.
    keep = {"Namespace", "CustomResourceDefinition"}
    objects = [o for g in init.load_manifests() for o in g.objects if o["kind"] not in keep]
    kube = await init.connect(kubeconfig)

    async def gone(path: str, query: list[tuple[str, Any]] | None = None) -> bool:
        """DELETE; False when there was nothing to delete (a second reset, or a partial install)."""
        try:
            await kube.request("DELETE", path, query=query)
        except NotFound:
            return False
        return True

    async def delete(what: str, path: str, query: list[tuple[str, Any]] | None = None) -> bool:
        return await init.guarded(f"deleting {what}", gone(path, query))

    try:
        for obj in reversed(objects):
            if await delete(init.describe(obj), init.object_path(obj), [("propagationPolicy", "Background")]):
                print(f"deleted {init.describe(obj)}")
        secret = f"Secret {NAMESPACE}/{CA_SECRET}"
        if await delete(secret, f"/api/v1/namespaces/{NAMESPACE}/secrets/{CA_SECRET}"):
            print(f"deleted {secret}")
        tokens = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
        selector = [("labelSelector", f"{RECORD_LABEL}={RECORD_KIND}")]
        listed = await init.guarded("listing join tokens", kube.request("GET", tokens, query=selector))
        count = len(listed.get("items") or [])
        await delete("join-token ConfigMaps", tokens, selector)
        print(f"deleted {count} join-token record(s)")
        # The CA is gone with its Secret, so are the certificates it issued: forget their names too.
        issued = [("labelSelector", f"{RECORD_LABEL}={ISSUED_KIND}")]
        await delete("issued-certificate ConfigMaps", tokens, issued)
    finally:
        await kube.close()
    print("kept: namespace kubeedge and the CRDs (deleting a CRD deletes every Device and DeviceModel with it)")
    return 0
