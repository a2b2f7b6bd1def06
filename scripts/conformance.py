"""``make conformance``: Kubernetes' node conformance specs, run by the real e2e suite against a kubage edge node.

    scripts/conformance [--focus REGEX] [--skip REGEX] [--procs N] [--dir DIR]

Builds (once, cached by version like the control plane: ``scripts/build-kube``) ``e2e.test``, agnhost,
nonewprivs and the ginkgo CLI; starts the four-process control plane, a private containerd with the suite's
images built here (nothing can be pulled: see ``suite_images``), CloudCore and one EdgeCore, whose node is the
only node of the cluster, so the scheduler puts every test pod on it; runs the selection with ginkgo in parallel
and prints a table per group, every failing spec with its one-line reason, and a final JSON line
``{"selected", "passed", "failed", "pass_rate"}``. Everything it started is stopped by pid at the end (also on
SIGTERM); the run's files (the suite's JSON report and log, every service's log) stay in ``--dir``.

The default selection is the one the node conformance issue names: ``[NodeConformance]`` without
``[Serial]``, ``[Disruptive]``, ``[Flaky]``, ``[Feature:…]`` or ``[Slow]``. The exit code is 0 when every
selected spec passed, 1 otherwise (and 2 when the stack could not be brought up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudcore.kube import Kube
from scripts.harness.cluster import ControlPlane, ControlPlaneError
from scripts.harness.containerd import PAUSE_CMD, Containerd, ContainerdError
from scripts.harness.containerd import start as start_containerd
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess

ROOT = Path(__file__).resolve().parent.parent
BUILD_KUBE = ROOT / "scripts" / "build-kube"
FOCUS = r"\[NodeConformance\]"
SKIP = r"\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Feature:|\[Slow\]"
E2E_REGISTRY = "registry.k8s.io/e2e-test-images"
PAUSE_REF = "registry.k8s.io/pause:3.10.2"  # the suite's imageutils.Pause
SPEC_TIMEOUT = "2h"
CURL = ROOT / "scripts" / "images" / "curl"  # the suite execs curl in agnhost pods: a wget stand-in
BASH = ROOT / "scripts" / "images" / "bash"  # and /bin/bash: busybox's ash


@dataclass(frozen=True)
class Image:
    """One image the selected specs run, built locally by scripts/mkimage.py over a full busybox."""

    ref: str
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)  # path in the image → host file
    modes: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    user: str = ""


def suite_images(versions: dict[str, list[str]], tools: dict[str, Path]) -> list[Image]:
    """The images, at the tags ``e2e.test --list-images`` printed (``versions``: name → tags), as their
    Dockerfiles in k8s.io/kubernetes/test/images make them."""
    images = [Image(PAUSE_REF, cmd=tuple(PAUSE_CMD))]
    images += [Image(f"{E2E_REGISTRY}/busybox:{tag}", cmd=("/bin/sh",)) for tag in versions["busybox"]]
    images += [
        Image(
            f"{E2E_REGISTRY}/agnhost:{tag}",
            cmd=("pause",),
            entrypoint=("/agnhost",),
            files={"/agnhost": tools["agnhost"], "/usr/bin/curl": CURL, "/bin/bash": BASH, **_porter_certificates()},
            links={"/agnhost-2": "agnhost"},
        )
        for tag in versions["agnhost"]
    ]
    images += [Image(f"{E2E_REGISTRY}/nonroot:{tag}", cmd=("/bin/sh",), user="1234") for tag in versions["nonroot"]]
    # Debian with dnsutils in reality; the specs that use it ask `hostname` and `hostname -f`: busybox answers.
    images += [
        Image(f"{E2E_REGISTRY}/glibc-dns-testing:{tag}", cmd=("/bin/sh",)) for tag in versions["glibc-dns-testing"]
    ]
    images += [
        Image(
            f"{E2E_REGISTRY}/nonewprivs:{tag}",
            cmd=("nnp",),
            files={"/usr/local/bin/nnp": tools["nonewprivs"]},
            modes={"/usr/local/bin/nnp": 0o4755},  # set-user-ID root, as the Dockerfile's chmod +s
            user="1000",
        )
        for tag in versions["nonewprivs"]
    ]
    return images


def _porter_certificates() -> dict[str, Path]:
    """The test certificate agnhost's image carries (``/localhost.crt``, ``.key``: HTTPS probes and hooks use it),
    from the release's source in the Go module cache."""
    version = os.environ.get("KUBAGE_K8S_VERSION", "v1.36.3")
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    porter = Path(cache) / f"k8s.io/kubernetes@{version}" / "test/images/agnhost/porter"
    return {f"/{name}": porter / name for name in ("localhost.crt", "localhost.key") if (porter / name).exists()}


def listed_versions(e2e: Path) -> dict[str, list[str]]:
    """The tags of the images built here that this e2e.test names, from ``--list-images``."""
    out = subprocess.run([str(e2e), "--list-images"], capture_output=True, text=True, check=True).stdout
    found: dict[str, list[str]] = {
        "busybox": [],
        "agnhost": [],
        "nonroot": [],
        "nonewprivs": [],
        "glibc-dns-testing": [],
    }
    for line in out.split():
        repository, _, tag = line.rpartition(":")
        for name, tags in found.items():
            if repository == f"{E2E_REGISTRY}/{name}":
                tags.append(tag)
    if not found["busybox"] or not found["agnhost"]:
        raise SystemExit(f"conformance: e2e.test --list-images lists no busybox or agnhost:\n{out}")
    return found


def build_tools() -> dict[str, Path]:
    names = [
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
        "e2e.test",
        "agnhost",
        "ginkgo",
        "nonewprivs",
    ]
    out = subprocess.run([str(BUILD_KUBE), *names], stdout=subprocess.PIPE, text=True, check=True).stdout
    return dict(zip(names, (Path(p) for p in out.split()), strict=True))


# --- the report ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    group: str
    name: str
    state: str  # passed, failed, skipped, pending, …
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def selected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state not in ("skipped", "pending")]

    def totals(self) -> dict[str, Any]:
        selected = self.selected
        passed = sum(o.state == "passed" for o in selected)
        return {
            "selected": len(selected),
            "passed": passed,
            "failed": len(selected) - passed,
            "pass_rate": round(passed / len(selected), 4) if selected else 0.0,
        }


def _one_line(text: str, width: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def read_report(path: Path) -> Summary:
    """Ginkgo's JSON report → one Outcome per spec, grouped by its outermost container (``[sig-node] Pods``)."""
    summary = Summary()
    for suite in json.loads(path.read_text()):
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            containers = spec.get("ContainerHierarchyTexts") or ["(top level)"]
            failure = spec.get("Failure") or {}
            reason = failure.get("Message") or ""
            summary.outcomes.append(
                Outcome(
                    group=containers[0],
                    name=" ".join([*containers[1:], spec.get("LeafNodeText", "")]).strip(),
                    state=str(spec.get("State", "")),
                    reason=_one_line(reason.strip().splitlines()[0] if reason.strip() else ""),
                    seconds=float(spec.get("RunTime", 0)) / 1e9,
                )
            )
    return summary


def print_report(summary: Summary) -> None:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in summary.selected:
        groups[outcome.group].append(outcome)
    width = max([len(g) for g in groups] + [10])
    print(f"\n{'group'.ljust(width)}  passed/selected")
    for group in sorted(groups):
        specs = groups[group]
        passed = sum(o.state == "passed" for o in specs)
        print(f"{group.ljust(width)}  {passed}/{len(specs)}")
    failed = [o for o in summary.selected if o.state != "passed"]
    if failed:
        print(f"\nfailing specs ({len(failed)}):")
        for outcome in sorted(failed, key=lambda o: (o.group, o.name)):
            print(f"  {outcome.group} {outcome.name}\n      {outcome.state}: {outcome.reason or '(no message)'}")
    print(json.dumps(summary.totals()))


# --- the stack -------------------------------------------------------------------------------------------------


async def _node_ready(kube: Kube, node: str) -> bool:
    found = await kube.get_or_none(f"/api/v1/nodes/{node}")
    if found is None or not (found.get("spec") or {}).get("podCIDR"):
        return False
    conditions = {c["type"]: c["status"] for c in (found.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True"


async def wait_node(kubeconfig: Path, node: str, timeout: float = 90.0) -> None:  # noqa: ASYNC109
    kube = await Kube.connect(str(kubeconfig))
    try:
        deadline = time.monotonic() + timeout
        while not await _node_ready(kube, node):
            if time.monotonic() > deadline:
                raise SystemExit(f"conformance: node {node} is not Ready with a pod CIDR after {timeout:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await kube.close()


def import_images(containerd: Containerd, images: list[Image]) -> None:
    for image in images:
        containerd.import_image(
            image.ref,
            list(image.cmd),
            image.files or None,
            timeout=60,
            entrypoint=image.entrypoint,
            all_applets=True,
            links=image.links,
            modes=image.modes,
            user=image.user,
        )


def run_suite(tools: dict[str, Path], kubeconfig: Path, args: argparse.Namespace, report_dir: Path) -> int:
    argv = [
        str(tools["ginkgo"]),
        f"--procs={args.procs}",
        f"--focus={args.focus}",
        f"--skip={args.skip}",
        f"--timeout={SPEC_TIMEOUT}",
        "--no-color",
        "--succinct",
        f"--output-dir={report_dir}",
        "--json-report=report.json",
        str(tools["e2e.test"]),
        "--",
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        f"--report-dir={report_dir}",
        "--allowed-not-ready-nodes=0",
        "--minStartupPods=0",
        "--system-pods-startup-timeout=30s",
        "--node-schedulable-timeout=60s",
        "--dump-logs-on-failure=false",
        "--disable-log-dump",
        "--e2e-verify-service-account=true",
    ]
    print("conformance: " + " ".join(argv), flush=True)
    with (report_dir / "ginkgo.log").open("w") as log:
        # Its own process group: ginkgo and its e2e.test workers are stopped together if we are interrupted.
        suite = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=report_dir, start_new_session=True)
        try:
            return suite.wait()
        finally:
            if suite.poll() is None:
                os.killpg(suite.pid, signal.SIGKILL)
                suite.wait()


@contextlib.contextmanager
def stack(workdir: Path, tools: dict[str, Path], versions: dict[str, list[str]]) -> Iterator[Path]:
    """The control plane, containerd with the suite's images, CloudCore and one EdgeCore whose node is Ready;
    yields the kubeconfig. Everything is stopped by pid on the way out."""
    plane: ControlPlane | None = None
    containerd: Containerd | None = None
    services: list[CloudCoreProcess | EdgeCoreProcess] = []
    try:
        plane, runtime = ControlPlane.up_beside(workdir / "control-plane", start_containerd)
        containerd = runtime
        import_images(runtime, suite_images(versions, tools))
        pki = Pki(workdir / "pki")
        cloud = CloudCoreProcess(workdir / "cloudcore", kubeconfig=plane.kubeconfig, pki=pki)
        services.append(cloud)
        cloud.start()
        asyncio.run(cloud.wait_ready())
        node = f"conformance-{uuid.uuid4().hex[:6]}"
        edge = EdgeCoreProcess(
            workdir / "edgecore",
            node=node,
            server=f"127.0.0.1:{cloud.port}",
            runtime_endpoint=runtime.endpoint,
            pki=pki,
        )
        services.append(edge)
        edge.start()
        asyncio.run(edge.wait_ready(timeout=60))
        asyncio.run(wait_node(plane.kubeconfig, node))
        print(f"conformance: node {node} Ready", flush=True)
        yield plane.kubeconfig
    finally:
        for service in reversed(services):
            service.stop()
        if containerd is not None:
            containerd.stop()
        if plane is not None:
            plane.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--focus", default=FOCUS)
    parser.add_argument("--skip", default=SKIP)
    parser.add_argument("--procs", type=int, default=int(os.environ.get("CONFORMANCE_PROCS", "6")))
    parser.add_argument("--dir", type=Path, default=None, help="where the run's reports and logs go")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so everything started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="kubage-conformance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"conformance: building the tools (cached after the first run); files in {workdir}", flush=True)
    tools = build_tools()
    versions = listed_versions(tools["e2e.test"])
    started = time.monotonic()
    report_dir = workdir / "report"
    report_dir.mkdir(exist_ok=True)
    try:
        with stack(workdir, tools, versions) as kubeconfig:
            print(f"conformance: running the suite with {args.procs} processes", flush=True)
            code = run_suite(tools, kubeconfig, args, report_dir)
    except (ControlPlaneError, ContainerdError, AssertionError) as exc:
        print(f"conformance: the stack did not come up: {exc}", file=sys.stderr)
        return 2
    report = report_dir / "report.json"
    if not report.exists():
        print(f"conformance: ginkgo wrote no report (exit {code}); see {report_dir / 'ginkgo.log'}")
        print((report_dir / "ginkgo.log").read_text()[-3000:])
        return 2
    summary = read_report(report)
    print_report(summary)
    print(f"conformance: {time.monotonic() - started:.0f} s; reports and logs in {workdir}", file=sys.stderr)
    return 0 if summary.totals()["failed"] == 0 and summary.selected else 1


if __name__ == "__main__":
    sys.exit(main())
