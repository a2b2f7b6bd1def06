"""EdgeCore footprint benchmark: the real ``edgecore`` process's memory, idle and running 10 pods.

Goal: RSS <= 50 MiB (KubeEdge's edgecore uses 57-80 MB). One run, everything real and on loopback:

  * its own control plane (etcd + kube-apiserver, ``scripts/control_plane.py up --dir``) in a temp dir;
  * a private containerd with the locally built busybox and pause images (``scripts.harness.containerd``);
  * a throwaway PKI (``scripts.harness.pki``), the real ``cloudcore`` and one real ``edgecore`` for node
    ``footprint-edge``, run as subprocesses with generated config files (``scripts.harness.services``), the edge using
    that containerd as its CRI runtime. Both run with their production intervals (EdgeHub heartbeat 15 s,
    node status every 10 s, CloudHub keepalive 15 s), not the tests' fast ones, so that idle means idle.

It runs them with the dev harness (``scripts/harness``), as the tests do.

Measured, on the edgecore process (its pid is the Python interpreter running the command):

  1. idle, once the node is Ready in the API server and a few seconds have passed: VmRSS from
     /proc/<pid>/status, and PSS and USS (Private_Clean + Private_Dirty) from /proc/<pid>/smaps_rollup,
     sampled ``--samples`` times over ``--window`` seconds, medians reported; its CPU % of one core over the
     window (utime + stime from /proc/<pid>/stat). For context, the RSS of a bare
     ``python -c "import time; time.sleep(30)"`` started the same way with the same interpreter: the floor of
     any Python process here.
  2. with 10 host-network busybox pods (``sh -c 'echo hi; sleep 3600'``) bound to the node and Running in the
     API server, after a few seconds to settle: the same samples again.

It prints a table and, as the last line of stdout, one JSON line. Everything it starts is stopped (pods
deleted, edgecore and cloudcore sent SIGTERM, containerd cleaned up, control plane down, temp dir removed),
also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.support import CLOCK_TICKS, cpu_seconds, guarded, log, log_tails, runtime_env, stop_services
from cloudcore.kube import Kube, KubeError
from common.loop import loop_name, run
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.containerd import BUSYBOX_IMAGE, Containerd
from scripts.harness.containerd import start as start_containerd
from scripts.harness.pki import Pki
from scripts.harness.procs import BIN, production_env
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess

ROOT = Path(__file__).resolve().parent.parent
NODE = "footprint-edge"
NAMESPACE = "bench-footprint"
PODS = 10
GOAL_MIB = 50
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- /proc ---------------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict (values with their unit, e.g. ``"41234 kB"``); {} if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def kib(status: dict[str, str], key: str) -> float:
    try:
        return float(status[key].split()[0])
    except (KeyError, IndexError, ValueError):
        return float("nan")


def smaps_rollup(pid: int) -> dict[str, float]:
    """PSS and USS (private clean + dirty) in KiB from /proc/<pid>/smaps_rollup; {} if unreadable."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = float(parts[0])
    if "Pss" not in values:
        return {}
    return {"pss": values["Pss"], "uss": values.get("Private_Clean", 0.0) + values.get("Private_Dirty", 0.0)}


@dataclass
class Sample:
    rss: float  # KiB
    anon: float
    file: float
    pss: float
    uss: float
    threads: float


def sample(pid: int) -> Sample:
    status = proc_status(pid)
    if not status:
        raise RuntimeError(f"process {pid} is gone")
    rollup = smaps_rollup(pid)
    return Sample(
        rss=kib(status, "VmRSS"),
        anon=kib(status, "RssAnon"),
        file=kib(status, "RssFile"),
        pss=rollup.get("pss", float("nan")),
        uss=rollup.get("uss", float("nan")),
        threads=float(status.get("Threads", "nan")),
    )


@dataclass
class Window:
    """Medians over a sampling window, in KiB, and the CPU % of one core over it."""

    samples: list[Sample]
    cpu_pct: float
    seconds: float

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in self.samples))

    def mib(self, attr: str) -> float:
        return self.median(attr) / 1024


async def measure(pid: int, seconds: float, count: int) -> Window:
    """``count`` samples spread evenly over ``seconds`` (first at the start, last at the end)."""
    loop = asyncio.get_running_loop()
    start, cpu0 = loop.time(), cpu_seconds(pid)
    samples = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * seconds / max(1, count - 1) - loop.time()))
        samples.append(sample(pid))
    wall, cpu1 = loop.time() - start, cpu_seconds(pid)
    return Window(samples, 100 * (cpu1 - cpu0) / wall if wall > 0 else float("nan"), wall)


# --- control plane -------------------------------------------------------------------------------------------


def start_backends(res: Resources) -> Path:
    """Control plane and containerd; returns the kubeconfig. The control plane comes up in its own process while
    containerd starts here: both take seconds."""
    t = time.perf_counter()
    res.plane, containerd = ControlPlane.up_beside(res.workdir / "control-plane", start_containerd)
    res.containerd = containerd
    log(f"control plane and containerd ready in {time.perf_counter() - t:.1f}s ({containerd.root})")
    return res.plane.kubeconfig


# --- the processes under test --------------------------------------------------------------------------------


@dataclass
class ProductionEdgeCore(EdgeCoreProcess):
    """The test helper's edgecore, with the production defaults for the intervals the tests shorten."""

    heartbeat: float = 15.0
    node_status_update_frequency: float = 10.0

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings["modules"]["edged"]["nodeStatusUpdateFrequency"] = self.node_status_update_frequency
        return settings


@dataclass
class Resources:
    """What the run started, so that the outermost ``finally`` can stop it whatever happened."""

    workdir: Path
    plane: ControlPlane | None = None
    containerd: Containerd | None = None
    cloudcore: CloudCoreProcess | None = None
    edgecore: EdgeCoreProcess | None = None
    floor: subprocess.Popen[bytes] | None = None
    pods_created: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C reaches the services too: their exit codes then say nothing

    def stop(self) -> None:
        if self.floor is not None and self.floor.poll() is None:
            self.floor.kill()
            self.floor.wait(5)
        stop_services([("edgecore", self.edgecore), ("cloudcore", self.cloudcore)], quiet=self.interrupted)
        if self.containerd is not None:
            problems = self.containerd.stop()
            if problems:
                log("containerd teardown:\n  " + "\n  ".join(problems))
        if self.plane is not None:
            self.plane.down()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:  # noqa: ASYNC109
    """Poll ``check`` until true; returns the seconds it took, raises TimeoutError naming ``what``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.2)
    return loop.time() - start


async def node_ready(kube: Kube) -> bool:
    try:
        node = await kube.get(f"/api/v1/nodes/{NODE}")
    except KubeError:
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# --probes: what pods written for a real cluster carry, checked often so that the probers are busy.
PROBE = {"exec": {"command": ["true"]}, "periodSeconds": 2}


def pod_body(name: str, *, probes: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo hi; sleep 3600"]}
    if probes:
        container |= {"readinessProbe": PROBE, "livenessProbe": PROBE}
    return {
        "metadata": {"name": name, "labels": {"app": "bench-footprint"}},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


async def pods_running(kube: Kube, names: list[str]) -> bool:
    listed = await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods")
    running = set()
    for pod in listed.get("items") or []:
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        if status.get("phase") == "Running" and containers and "running" in (containers[0].get("state") or {}):
            running.add(pod["metadata"]["name"])
    return running.issuperset(names)


async def pods_gone(kube: Kube) -> bool:
    listed = await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods")
    return not listed.get("items")


async def delete_pods(kube: Kube, names: list[str], timeout: float, *, wait: bool = True) -> None:  # noqa: ASYNC109
    """Delete the pods and give the edge a bounded time to stop them (containerd's cleanup does the rest).

    Edged stops a deleted pod's containers within its grace period, one pod after the other: with sh as the
    container's pid 1 (it ignores SIGTERM) that is about a second per pod here."""
    for name in names:
        with contextlib.suppress(KubeError):
            await kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    if not wait:
        return
    try:
        took = await eventually(lambda: pods_gone(kube), timeout, "pods deleted")
        log(f"{len(names)} pods deleted in {took:.1f}s")
    except TimeoutError as exc:
        log(f"{exc} (containerd's cleanup removes what is left)")


def start_floor() -> subprocess.Popen[bytes]:
    """The floor of any Python process here, started like the services (same interpreter, same environment)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=production_env(),
    )


# --- the benchmark -------------------------------------------------------------------------------------------


@dataclass
class Results:
    idle: Window
    pods: Window
    floor: Sample
    timings: dict[str, float]
    probes: bool = False  # the pods had readiness and liveness probes


async def bench(args: argparse.Namespace, kubeconfig: Path, res: Resources) -> Results:
    timings: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    assert res.containerd is not None
    pki = await asyncio.to_thread(Pki, res.workdir / "pki")
    cloud = CloudCoreProcess(res.workdir / "cloudcore", kubeconfig=kubeconfig, pki=pki, keepalive_interval=15.0)
    res.cloudcore = cloud
    cloud.start()
    kube = await Kube.connect(str(kubeconfig))
    try:
        await create_namespace(kube, NAMESPACE)
        await cloud.wait_ready(30)
        edge = ProductionEdgeCore(
            res.workdir / "edgecore",
            node=NODE,
            server=f"127.0.0.1:{cloud.port}",
            runtime_endpoint=res.containerd.endpoint,
            pki=pki,
            bin_dir=args.bin_dir,
        )
        res.edgecore = edge
        t = loop.time()
        edge.start()
        assert edge.proc is not None
        pid = edge.proc.pid
        await edge.wait_ready(30)
        timings["edgecore ready"] = loop.time() - t
        await eventually(lambda: node_ready(kube), 30, f"node {NODE} Ready")
        timings["node Ready"] = loop.time() - t
        log(f"edgecore pid {pid} ready in {timings['edgecore ready']:.1f}s, node Ready at {timings['node Ready']:.1f}s")

        res.floor = start_floor()

        await asyncio.sleep(args.settle)
        log(f"idle: sampling edgecore {args.samples} times over {args.window:g}s")
        idle = await measure(pid, args.window, args.samples)
        floor = sample(res.floor.pid)
        res.floor.kill()
        res.floor.wait(5)

        names = [f"footprint-{i:02d}" for i in range(PODS)]
        t = loop.time()
        for name in names:
            await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body(name, probes=args.probes))
            res.pods_created.append(name)
        await eventually(lambda: pods_running(kube, names), args.pods_timeout, f"{PODS} pods Running")
        timings[f"{PODS} pods Running"] = loop.time() - t
        log(f"{PODS} pods Running in the API server after {timings[f'{PODS} pods Running']:.1f}s")
        await asyncio.sleep(args.settle)
        log(f"with {PODS} pods: sampling edgecore {args.samples} times over {args.window:g}s")
        pods = await measure(pid, args.window, args.samples)
        if edge.proc.poll() is not None:
            raise RuntimeError(f"edgecore exited with {edge.proc.returncode}:\n{edge.tail()}")

        t = loop.time()
        await delete_pods(kube, res.pods_created, 20)
        res.pods_created.clear()
        timings["pods deleted"] = loop.time() - t
    finally:
        if res.pods_created:  # interrupted or failed with pods in place: delete them, do not wait for the edge
            with contextlib.suppress(Exception):  # (containerd's cleanup stops and removes their containers)
                await asyncio.wait_for(delete_pods(kube, res.pods_created, 0, wait=False), 10)
        await kube.close()
    return Results(idle, pods, floor, timings, probes=args.probes)


def report(results: Results) -> None:
    idle, pods, floor = results.idle, results.pods, results.floor

    resolution = 100 / CLOCK_TICKS / idle.seconds  # one clock tick over the window, in %

    def both(attr: str) -> str:
        return f"{idle.mib(attr):7.1f}  {pods.mib(attr):7.1f}"

    rows = [
        (
            "edgecore (MiB, medians)",
            f"{'idle':>7}  {f'{PODS} pods':>7}" + ("  (with probes)" if results.probes else ""),
        ),
        ("RSS (VmRSS)", both("rss") + f"   goal <= {GOAL_MIB}"),
        ("  anonymous", both("anon")),
        ("  file-backed", both("file")),
        (
            "PSS (shared pages split)",
            both("pss") if not any(math.isnan(s.pss) for s in idle.samples) else "unavailable",
        ),
        ("USS (private)", both("uss") if not any(math.isnan(s.uss) for s in idle.samples) else "unavailable"),
        ("threads", f"{idle.median('threads'):7.0f}  {pods.median('threads'):7.0f}"),
        ("CPU % of a core", f"{idle.cpu_pct:7.2f}  {pods.cpu_pct:7.2f}   resolution {resolution:.2f}"),
        ("python floor RSS", f"{floor.rss / 1024:7.1f}  (bare `python -c 'import time; time.sleep(30)'`)"),
        ("python floor PSS", f"{floor.pss / 1024:7.1f}"),
        (
            "RSS above the floor",
            f"{(idle.median('rss') - floor.rss) / 1024:7.1f}  {(pods.median('rss') - floor.rss) / 1024:7.1f}",
        ),
        ("loop (benchmark)", loop_name()),
        ("timings (s)", "  ".join(f"{k} {v:.1f}" for k, v in results.timings.items())),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    verdict = "met" if pods.mib("rss") <= GOAL_MIB and idle.mib("rss") <= GOAL_MIB else "MISSED"
    print(f"goal {GOAL_MIB} MiB: {verdict}")
    print(
        json.dumps(
            {
                "bench": "edge_footprint",
                "idle_rss_mib": round(idle.mib("rss"), 1),
                "pods10_rss_mib": round(pods.mib("rss"), 1),
                "goal_mib": GOAL_MIB,
                "python_floor_mib": round(floor.rss / 1024, 1),
                "idle_cpu_pct": round(idle.cpu_pct, 2),
                "pods10_cpu_pct": round(pods.cpu_pct, 2),
                "probes": results.probes,
            }
        ),
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each window (default 3)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of each sampling window (default 5)")
    parser.add_argument("--samples", type=int, default=6, help="samples per window (default 6)")
    parser.add_argument("--pods-timeout", type=float, default=60.0, help="wait for the pods to run (default 60)")
    parser.add_argument(
        "--probes", action="store_true", help="the 10 pods have exec readiness and liveness probes every 2 s"
    )
    parser.add_argument(
        "--dev-env", action="store_true", help="run edgecore from this venv, test tools and all, not a runtime-only one"
    )
    args = parser.parse_args(argv)
    args.bin_dir = BIN if args.dev_env else runtime_env()
    if args.settle < 0 or args.window <= 0 or args.samples < 1 or args.pods_timeout <= 0:
        parser.error("--window, --samples and --pods-timeout must be positive, --settle not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    res = Resources(workdir=workdir)

    def body() -> int:
        try:
            t = time.perf_counter()
            kubeconfig = start_backends(res)
            log(f"control plane up after {time.perf_counter() - t:.1f}s")
            report(run(bench(args, kubeconfig, res)))
        except KeyboardInterrupt:
            res.interrupted = True  # Ctrl-C reached the services too: their exit codes say nothing
            raise
        return 0

    return guarded(body, teardown=res.stop, show_logs=lambda: log_tails([res.cloudcore, res.edgecore]), started=started)


if __name__ == "__main__":
    sys.exit(main())
