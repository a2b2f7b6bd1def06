"""Streams benchmark: kubectl logs -f latency, exec round trips, bulk exec throughput, and object sync meanwhile.

One run, everything real and on loopback: its own control plane, a private containerd, the real ``cloudcore``
and ``edgecore`` commands (the dev harness), the real ``kubectl``. Each figure beside its raw baseline:

  * logs: a container prints a line every 20 ms; the latency of each line (from the time the runtime stamped it
    with in the CRI log) to ``kubectl logs -f --timestamps`` (through the API server, CloudCore's stream server,
    the tunnel and EdgeCore) beside the latency of the same line to a reader polling the CRI log file on the node
    every 5 ms;
  * exec: ``kubectl exec POD -- true`` round trips beside CRI ExecSync of the same command, called directly;
  * bulk: ``kubectl exec POD -- cat`` of ``--megabytes`` MB to /dev/null beside the same bytes read straight
    from containerd's streaming URL (CRI Exec, then its WebSocket channel protocol);
  * sync under load: a configmap the pod uses is updated every 100 ms; the time from the update's response to
    its commit in the edge's SQLite, while idle and while the bulk stream runs (goal: p99 <= 2x idle).

Prints a table, writes ``streams.png`` (latency histograms) next to it, and prints one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from benchmarks.support import guarded, log, log_tails, stop_services, table
from cloudcore.kube import Kube
from common.loop import run
from edgecore.edged.cri import CriRuntime
from edgecore.edged.logs import parse_time
from edgecore.edged.runtime import POD_UID
from scripts.harness.cluster import ControlPlane, create_edge_node, create_namespace
from scripts.harness.containerd import Containerd
from scripts.harness.containerd import start as start_containerd
from scripts.harness.pki import Pki
from scripts.harness.procs import production_env
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from scripts.harness.stats import percentile

NODE = "bench-streams"
NAMESPACE = "bench-streams"
IMAGE = "localhost/busybox:1.35"
CLOCK = "while true; do echo tick; sleep 0.02; done"  # the CRI log's own timestamp says when each was written


@dataclass
class Resources:
    workdir: Path
    plane: ControlPlane | None = None
    containerd: Containerd | None = None
    cloudcore: CloudCoreProcess | None = None
    edgecore: EdgeCoreProcess | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=10)
        stop_services([("edgecore", self.edgecore), ("cloudcore", self.cloudcore)])
        if self.containerd is not None:
            self.containerd.stop()
        if self.plane is not None:
            self.plane.down()
        shutil.rmtree(self.workdir, ignore_errors=True)


def kubectl(plane: ControlPlane, *args: str) -> list[str]:
    return ["kubectl", "--kubeconfig", str(plane.kubeconfig), "-n", NAMESPACE, *args]


async def wait_for(check: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


async def running(kube: Kube, name: str) -> bool:
    pod = await kube.get_or_none(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and "running" in statuses[0].get("state", {})


def pod(name: str, script: str, *, configmap: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": NODE,
        "hostNetwork": True,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script]}],
    }
    if configmap:
        spec["volumes"] = [{"name": "cfg", "configMap": {"name": configmap}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    return {"metadata": {"name": name}, "spec": spec}


# --- logs ------------------------------------------------------------------------------------------------------


async def kubectl_follow(plane: ControlPlane, res: Resources, seconds: float) -> list[float]:
    """Latency (s) of each line to ``kubectl logs -f``."""
    proc = await asyncio.create_subprocess_exec(
        *kubectl(plane, "logs", "-f", "--timestamps", "clock", "--tail=0"), stdout=subprocess.PIPE, env=production_env()
    )
    assert proc.stdout is not None
    latencies = []
    try:
        async with asyncio.timeout(seconds):
            while line := await proc.stdout.readline():
                stamp = parse_time(line.split(b" ", 1)[0].decode())
                if stamp is not None:
                    latencies.append(time.time() - stamp / 1e9)
    except TimeoutError:
        pass
    finally:
        proc.kill()
        await proc.wait()
    return latencies


async def file_follow(path: Path, seconds: float) -> list[float]:
    """Latency (s) of each line to a reader polling the CRI log file every 5 ms (the raw baseline)."""
    latencies = []
    with path.open("rb") as f:
        f.seek(0, 2)
        rest = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data = f.read()
            if data:
                now = time.time()
                *records, rest = (rest + data).split(b"\n")
                for record in records:
                    stamp = parse_time(record.split(b" ", 1)[0].decode())
                    if stamp is not None:
                        latencies.append(now - stamp / 1e9)
            else:
                await asyncio.sleep(0.005)
    return latencies


# --- exec --------------------------------------------------------------------------------------------------------


async def exec_round_trips(plane: ControlPlane, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *kubectl(plane, "exec", "box", "--", "true"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=production_env(),
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl exec failed: {err.decode().strip()}")
        times.append(time.perf_counter() - started)
    return times


async def cri_exec_round_trips(runtime: CriRuntime, container_id: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await runtime.exec_sync(container_id, ["true"], 30)
        times.append(time.perf_counter() - started)
    return times


async def kubectl_cat(plane: ControlPlane, megabytes: int) -> tuple[float, int]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *kubectl(plane, "exec", "box", "--", "cat", "/tmp/blob"), stdout=subprocess.PIPE, env=production_env()
    )
    assert proc.stdout is not None
    received = 0
    while chunk := await proc.stdout.read(1 << 20):
        received += len(chunk)
    await proc.wait()
    return time.perf_counter() - started, received


async def cri_cat(runtime: CriRuntime, container_id: str) -> tuple[float, int]:
    """The same bytes from containerd's streaming URL, over its WebSocket channel protocol (v4.channel.k8s.io)."""
    started = time.perf_counter()
    url = await runtime.exec_url(container_id, ["cat", "/tmp/blob"], tty=False, stdin=False, stdout=True, stderr=True)
    parts = urlsplit(url)
    received = 0
    async with connect(
        f"ws://{parts.netloc}{parts.path}?{parts.query}", subprotocols=[Subprotocol("v4.channel.k8s.io")], max_size=None
    ) as ws:
        async for frame in ws:
            data = frame if isinstance(frame, bytes) else frame.encode()
            if data[:1] == b"\x01":
                received += len(data) - 1
    return time.perf_counter() - started, received


# --- sync under load ---------------------------------------------------------------------------------------------


async def sync_latencies(kube: Kube, store: Path, seconds: float) -> list[float]:
    """Update the configmap every 100 ms; time from the update's answer to its commit at the edge."""
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/cfg"
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            updated = await kube.request(
                "PATCH", path, body={"data": {"n": str(i)}}, content_type="application/merge-patch+json"
            )
            at, rv = time.perf_counter(), updated["metadata"]["resourceVersion"]
            while time.perf_counter() - at < 5:
                row = db.execute(
                    "SELECT resource_version FROM objects WHERE kind = 'configmap' AND name = 'cfg'"
                ).fetchone()
                if row and int(row[0]) >= int(rv):
                    latencies.append(time.perf_counter() - at)
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.1)
    finally:
        db.close()
    return latencies


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Results:
    logs: list[float] = field(default_factory=list)
    logs_raw: list[float] = field(default_factory=list)
    exec_: list[float] = field(default_factory=list)
    exec_raw: list[float] = field(default_factory=list)
    bulk: tuple[float, int] = (math.nan, 0)
    bulk_raw: tuple[float, int] = (math.nan, 0)
    sync_idle: list[float] = field(default_factory=list)
    sync_busy: list[float] = field(default_factory=list)


async def bench(args: argparse.Namespace, res: Resources) -> Results:
    assert res.plane is not None and res.containerd is not None
    pki = Pki(res.workdir / "pki")
    res.cloudcore = CloudCoreProcess(res.workdir / "cloudcore", kubeconfig=res.plane.kubeconfig, pki=pki)
    res.cloudcore.start()
    kube = await Kube.connect(str(res.plane.kubeconfig))
    runtime = CriRuntime(res.containerd.endpoint)
    out = Results()
    try:
        await create_namespace(kube, NAMESPACE)
        await kube.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", body={"metadata": {"name": "cfg"}, "data": {"n": "0"}}
        )
        await create_edge_node(kube, NODE)
        await res.cloudcore.wait_ready()
        res.edgecore = EdgeCoreProcess(
            res.workdir / "edge",
            node=NODE,
            server=f"127.0.0.1:{res.cloudcore.port}",
            runtime_endpoint=res.containerd.endpoint,
            pki=pki,
            stream_bytes_per_s=args.pace_mib * 1024 * 1024 if args.pace_mib is not None else None,
        )
        res.edgecore.start()
        await res.edgecore.wait_ready()
        for name, script, cfg in (("clock", CLOCK, None), ("box", "sleep 36000", "cfg")):
            await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod(name, script, configmap=cfg))
        await wait_for(lambda: running(kube, "clock"), 90, "pod clock running")
        await wait_for(lambda: running(kube, "box"), 90, "pod box running")
        log("pods running")
        box = await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods/box")
        clock = await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods/clock")
        containers = await runtime.list_containers()
        box_id = next(c.id for c in containers if c.labels.get(POD_UID) == box["metadata"]["uid"])
        clock_log = next(Path(c.log_path) for c in containers if c.labels.get(POD_UID) == clock["metadata"]["uid"])

        out.logs, out.logs_raw = await asyncio.gather(
            kubectl_follow(res.plane, res, args.seconds), file_follow(clock_log, args.seconds)
        )
        log(f"logs: {len(out.logs)} lines through kubectl, {len(out.logs_raw)} from the file")
        out.exec_ = await exec_round_trips(res.plane, args.execs)
        out.exec_raw = await cri_exec_round_trips(runtime, box_id, args.execs)
        log("exec round trips done")
        made = await runtime.exec_sync(
            box_id, ["dd", "if=/dev/zero", "of=/tmp/blob", "bs=1M", f"count={args.megabytes}"], 120
        )
        if made.exit_code != 0:
            raise RuntimeError(f"dd failed: {made.stderr.decode()}")
        out.bulk_raw = await cri_cat(runtime, box_id)
        out.sync_idle = await sync_latencies(kube, res.edgecore.workdir / "edgecore.db", args.seconds)
        bulk = asyncio.create_task(kubectl_cat(res.plane, args.megabytes))
        out.sync_busy = await sync_latencies(kube, res.edgecore.workdir / "edgecore.db", args.seconds)
        out.bulk = await bulk
        log("bulk and sync done")
    finally:
        await runtime.close()
        await kube.close()
    return out


def ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1) if values else math.nan


def report(args: argparse.Namespace, r: Results, workdir_png: Path) -> None:
    bulk_mb_s = r.bulk[1] / 1e6 / r.bulk[0] if r.bulk[0] else math.nan
    raw_mb_s = r.bulk_raw[1] / 1e6 / r.bulk_raw[0] if r.bulk_raw[0] else math.nan
    ratio = ms(r.sync_busy, 99) / ms(r.sync_idle, 99) if r.sync_idle else math.nan
    rows = [
        ("logs -f latency p50 / p99 ms (kubectl)", f"{ms(r.logs, 50)} / {ms(r.logs, 99)}   ({len(r.logs)} lines)"),
        ("logs latency p50 / p99 ms (CRI file)", f"{ms(r.logs_raw, 50)} / {ms(r.logs_raw, 99)}"),
        ("exec round trip p50 / p99 ms (kubectl)", f"{ms(r.exec_, 50)} / {ms(r.exec_, 99)}   ({args.execs} runs)"),
        ("exec round trip p50 / p99 ms (CRI ExecSync)", f"{ms(r.exec_raw, 50)} / {ms(r.exec_raw, 99)}"),
        ("bulk cat MB/s (kubectl exec)", f"{bulk_mb_s:.1f}   ({r.bulk[1] / 1e6:.0f} MB)"),
        ("bulk cat MB/s (containerd URL)", f"{raw_mb_s:.1f}   ratio {bulk_mb_s / raw_mb_s:.2f}"),
        ("object sync p50 / p99 ms idle", f"{ms(r.sync_idle, 50)} / {ms(r.sync_idle, 99)}"),
        ("object sync p50 / p99 ms during bulk", f"{ms(r.sync_busy, 50)} / {ms(r.sync_busy, 99)}   "
         f"ratio {ratio:.2f} (goal <= 2)"),
    ]  # fmt: skip
    print(table(rows))
    plot(r, workdir_png)
    print(
        json.dumps(
            {
                "bench": "streams",
                "logs_p50_ms": ms(r.logs, 50),
                "logs_p99_ms": ms(r.logs, 99),
                "logs_raw_p50_ms": ms(r.logs_raw, 50),
                "logs_raw_p99_ms": ms(r.logs_raw, 99),
                "exec_p50_ms": ms(r.exec_, 50),
                "exec_raw_p50_ms": ms(r.exec_raw, 50),
                "bulk_mb_s": round(bulk_mb_s, 1),
                "bulk_raw_mb_s": round(raw_mb_s, 1),
                "sync_idle_p99_ms": ms(r.sync_idle, 99),
                "sync_busy_p99_ms": ms(r.sync_busy, 99),
                "sync_ratio": round(ratio, 2),
                "pace_mib_s": args.pace_mib if args.pace_mib is not None else 16,
            }
        )
    )


def plot(r: Results, path: Path) -> None:
    """Latency histograms (logs through kubectl vs the file; sync idle vs during bulk), if matplotlib is there."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the picture

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log("matplotlib not installed: no streams.png")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist([v * 1000 for v in r.logs], bins=40, alpha=0.6, label="kubectl logs -f")
    left.hist([v * 1000 for v in r.logs_raw], bins=40, alpha=0.6, label="CRI log file")
    left.set_xlabel("line latency (ms)")
    left.legend()
    right.hist([v * 1000 for v in r.sync_idle], bins=40, alpha=0.6, label="sync, idle")
    right.hist([v * 1000 for v in r.sync_busy], bins=40, alpha=0.6, label="sync, during bulk exec")
    right.set_xlabel("configmap update to edge commit (ms)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of logs and of each sync phase")
    parser.add_argument("--execs", type=int, default=20, help="exec round trips each way")
    parser.add_argument("--megabytes", type=int, default=100, help="size of the bulk cat")
    parser.add_argument(
        "--pace-mib",
        type=float,
        default=None,
        help="modules.edgeStream.maxBytesPerSecond in MiB/s (0: unpaced; default: EdgeCore's, 16)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    res = Resources(workdir=Path(tempfile.mkdtemp(prefix="bench-streams-")))
    png = Path(__file__).resolve().parent / "streams.png"

    def body() -> int:
        res.plane, res.containerd = ControlPlane.up_beside(res.workdir / "control-plane", start_containerd)
        log(f"control plane and containerd up after {time.perf_counter() - started:.1f}s")
        report(args, run(bench(args, res)), png)
        return 0

    return guarded(body, teardown=res.stop, show_logs=lambda: log_tails([res.cloudcore, res.edgecore]), started=started)


if __name__ == "__main__":
    sys.exit(main())
