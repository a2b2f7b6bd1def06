"""Dispatch benchmark: pods created through the API server → committed and acked by their edge, end to end.

One run, everything real and on loopback:

  * its own control plane (etcd + kube-apiserver, ``scripts/control_plane.py up --dir``) in a temp dir;
  * the real ``cloudcore`` command as a subprocess, with a throwaway PKI;
  * ``--nodes`` Node objects labelled as edge nodes, and as many hollow edges: real EdgeHubs (mutual TLS, a
    real MetaStore in ``:memory:`` SQLite each), split over ``--processes`` spawned child processes;
  * pods created at a steady ``--rate`` per second, round-robin over the nodes, ``spec.nodeName`` set.

Per pod: t0 just before the POST, t1 when it returned (API create latency t1 - t0), and t_edge, the wall time
the edge's change listener saw the pod, right after the SQLite commit and just before the ack is sent. The
dispatch latency is t_edge - t1: it can be slightly negative when the watch event beats the HTTP response.
All times are ``time.time()`` in every process: one machine, one clock. For comparison the benchmark also
watches the pods itself and reports the API server's own watch delivery (t_watch - t1).

The first ``--warmup`` seconds of pods are created and delivered but not measured. The run prints a table and,
as the last line of stdout, one JSON line. Everything it starts is stopped, and the temp dir removed, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.support import cpu_seconds, guarded, log, log_tails, recv_within, rss_kib, runq_seconds, stop_child
from cloudcore.kube import Conflict, Kube, KubeError
from common.logging import configure_logging
from common.loop import loop_name, run
from common.messages import NodeName
from common.tls import client_context
from edgecore.edgehub import EdgeHub, EdgeHubSettings
from edgecore.metamanager.store import Change, MetaStore
from scripts.harness.cluster import ControlPlane, create_edge_node, create_namespace
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from scripts.harness.stats import ms, percentile

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAMESPACE = "bench-dispatch"
IMAGE = "localhost/busybox:1.35"
CONNECT_BATCH = 100  # edges started at once in each child: a TLS handshake storm would only time out and retry


def node_name(i: int) -> str:
    return f"bench-edge-{i:04d}"


def pod_name(i: int) -> str:
    return f"bench-pod-{i:06d}"


# --- hollow edges (child processes) --------------------------------------------------------------------------


def edge_child(conn: Connection, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to stop
    with open(spec["log"], "a") as log_stream:
        configure_logging("info", stream=log_stream, json=True)
        run(_edge_child(conn, spec))


class EdgeRecorder:
    """Change listener state of one child: when each bench pod (and each node's Node object) first arrived."""

    def __init__(self, namespace: str, edges: int) -> None:
        self._namespace = namespace
        self._edges = edges
        self.all_nodes = asyncio.Event()  # every edge holds its own Node object
        self.seen: set[str] = set()
        self.fresh: list[tuple[str, float]] = []  # arrivals since the parent last collected
        self.nodes: set[str] = set()

    def listener(self) -> Any:
        def on_changes(changes: list[Change]) -> None:
            now = time.time()
            for change in changes:
                if change.operation == "delete":
                    continue
                namespace, kind, name = change.resource.split("/", 2)
                if kind == "pod" and namespace == self._namespace:
                    if name not in self.seen:
                        self.seen.add(name)
                        self.fresh.append((name, now))
                elif kind == "node":
                    self.nodes.add(name)
                    if len(self.nodes) >= self._edges:
                        self.all_nodes.set()

        return on_changes


async def _edge_child(conn: Connection, spec: dict[str, Any]) -> None:
    deadline = time.monotonic() + spec["lifetime"]
    stores: list[MetaStore] = []
    tasks: list[asyncio.Task[None]] = []
    recorder = EdgeRecorder(spec["namespace"], len(spec["nodes"]))
    try:
        pki = Path(spec["pki"])
        edges: list[EdgeHub] = []
        for node in spec["nodes"]:
            store = await MetaStore.open(":memory:")
            stores.append(store)
            edge = EdgeHub(
                settings=EdgeHubSettings(
                    server=f"127.0.0.1:{spec['port']}",
                    node_name=NodeName(node),
                    keepalive_interval=15.0,
                    close_timeout=0.5,
                ),
                ssl_context=client_context(pki / f"node-{node}.crt", pki / f"node-{node}.key", pki / "ca.crt"),
                store=store,
            )
            edge.add_change_listener(recorder.listener())
            edges.append(edge)
        conn.send({"pid": os.getpid(), "edges": len(edges)})
        while True:
            command = await recv_within(conn, max(1.0, deadline - time.monotonic()))
            if command[0] == "stop":
                break
            if command[0] == "connect":
                started = time.monotonic()
                timeout = command[1]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        for start in range(0, len(edges), CONNECT_BATCH):
                            batch = edges[start : start + CONNECT_BATCH]
                            tasks.extend(
                                asyncio.create_task(e.run(), name=f"edge.{e.settings.node_name}") for e in batch
                            )
                            await asyncio.gather(*(e.connected.wait() for e in batch))
                        await recorder.all_nodes.wait()
                conn.send(
                    {
                        "connected": sum(e.connected.is_set() for e in edges),
                        "with_node": len(recorder.nodes),
                        "seconds": time.monotonic() - started,
                    }
                )
            elif command[0] == "collect":
                fresh, recorder.fresh = recorder.fresh, []
                conn.send(
                    {
                        "arrivals": fresh,
                        "connected": sum(e.connected.is_set() for e in edges),
                        "sessions": sum(e.sessions for e in edges),
                        "applied": sum(e.applied for e in edges),
                        "rejected": sum(e.rejected for e in edges),
                    }
                )
    except (TimeoutError, EOFError, OSError):
        pass  # the parent went away or the lifetime is up: stop all the same
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for store in stores:
            with contextlib.suppress(Exception):
                await store.close()


@dataclass
class EdgeProcess:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    nodes: list[str]
    pid: int = 0

    def stop(self) -> None:
        stop_child(self.process, self.conn, timeout=30)


def node_pki(directory: Path, nodes: list[str]) -> Pki:
    """Every node's certificate written up front: the edge children load theirs from files (keys do not cross
    process boundaries)."""
    pki = Pki(directory)
    for node in nodes:
        pki.node_files(node)
    return pki


def start_edges(args: argparse.Namespace, nodes: list[str], pki: Pki, port: int, workdir: Path) -> list[EdgeProcess]:
    ctx = multiprocessing.get_context("spawn")
    per = math.ceil(len(nodes) / args.processes)
    lifetime = 300 + 0.3 * len(nodes) + args.warmup + args.seconds + args.drain_timeout
    out = []
    for k in range(args.processes):
        chunk = nodes[k * per : (k + 1) * per]
        if not chunk:
            continue
        parent, child = ctx.Pipe()
        spec = {
            "nodes": chunk,
            "pki": str(pki.directory),
            "port": port,
            "namespace": NAMESPACE,
            "lifetime": lifetime,
            "log": str(workdir / f"edges-{k}.log"),
        }
        process = ctx.Process(target=edge_child, args=(child, spec), name=f"bench-edges-{k}")
        process.start()
        child.close()  # ours: the child exiting means EOF here, not a wait for a timeout
        out.append(EdgeProcess(process, parent, chunk))
    return out


# --- the benchmark -------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """What the run started, so that the outermost ``finally`` can stop it whatever happened."""

    plane: ControlPlane | None = None
    cloudcore: CloudCoreProcess | None = None
    edges: list[EdgeProcess] = field(default_factory=list)

    def stop(self) -> None:
        for edge in self.edges:
            with contextlib.suppress(OSError):
                edge.conn.send(("stop",))
        for edge in self.edges:
            edge.stop()
        if self.cloudcore is not None:
            self.cloudcore.stop()
        if self.plane is not None:
            self.plane.down()


@dataclass
class PodTimes:
    node: str
    scheduled: float  # wall time the pacer meant to start the create
    t0: float = math.nan  # just before the POST
    t1: float = math.nan  # the POST returned
    error: str = ""


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench-dispatch"}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": IMAGE}]},
    }


async def bounded_gather(coros: list[Any], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with gate:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def create_nodes(kube: Kube, nodes: list[str]) -> None:
    async def create(name: str) -> None:
        with contextlib.suppress(Conflict):  # left from an earlier run
            await create_edge_node(kube, name)

    await bounded_gather([create(n) for n in nodes], 16)


async def watch_pods(kube: Kube, seen: dict[str, float]) -> None:
    """The API server's own delivery, as a baseline: first time a watch here sees each pod."""
    _, rv = await kube.list_all(f"/api/v1/namespaces/{NAMESPACE}/pods")
    while True:
        async for event in kube.watch(f"/api/v1/namespaces/{NAMESPACE}/pods", rv, timeout_seconds=600):
            now = time.time()
            obj = event["object"]
            rv = obj["metadata"]["resourceVersion"]
            if event["type"] == "ADDED":
                seen.setdefault(obj["metadata"]["name"], now)


async def collect(edges: list[EdgeProcess], arrivals: dict[str, float]) -> dict[str, int]:
    totals = {"connected": 0, "sessions": 0, "applied": 0, "rejected": 0}
    for edge in edges:
        edge.conn.send(("collect",))
    for edge in edges:
        reply = await recv_within(edge.conn, 30)
        for name, t in reply["arrivals"]:
            arrivals.setdefault(name, t)
        for key in totals:
            totals[key] += reply[key]
    return totals


async def create_pods(kube: Kube, pods: dict[str, PodTimes], rate: float, concurrency: int, *, start_at: float) -> None:
    """Start create i at ``start_at + i/rate`` (monotonic); creates run as tasks, at most ``concurrency`` at once,
    so one slow create does not push back the later ones (unless ``concurrency`` are all slow)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    offset = time.time() - loop.time()  # wall = monotonic + offset, for the scheduled times

    async def create(name: str, times: PodTimes) -> None:
        async with gate:
            times.t0 = time.time()
            try:
                await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body(name, times.node))
            except KubeError as exc:
                times.error = f"{type(exc).__name__}: {exc}"
                return
            times.t1 = time.time()

    tasks = []
    for i, (name, times) in enumerate(pods.items()):
        due = start_at + i / rate
        times.scheduled = due + offset
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(create(name, times), name=f"create.{name}"))
    await asyncio.wait(tasks, timeout=60)


def cpu_sample(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}


async def bench(args: argparse.Namespace, workdir: Path, plane: ControlPlane, res: Resources) -> int:
    nodes = [node_name(i) for i in range(args.nodes)]
    started = time.monotonic()
    pki = await asyncio.to_thread(node_pki, workdir / "pki", nodes)
    log(f"PKI with {len(nodes)} node certificates in {time.monotonic() - started:.1f}s")

    cloudcore = CloudCoreProcess(
        workdir / "cloudcore",
        kubeconfig=plane.kubeconfig,
        pki=pki,
        keepalive_interval=15,
        node_limit=args.nodes + 10,
        lease_renew_interval=args.lease_interval,
    )
    res.cloudcore = cloudcore
    cloudcore.start()
    kube = await Kube.connect(str(plane.kubeconfig))
    watcher: asyncio.Task[None] | None = None
    try:
        await create_namespace(kube, NAMESPACE)
        t = time.monotonic()
        await create_nodes(kube, nodes)
        log(f"{len(nodes)} Node objects created in {time.monotonic() - t:.1f}s")
        await cloudcore.wait_ready(timeout=60)
        log(f"cloudcore ready (pid {cloudcore.process.pid}, websocket :{cloudcore.port})")

        # hollow edges
        t = time.monotonic()
        res.edges = start_edges(args, nodes, pki, cloudcore.port, workdir)
        for edge in res.edges:
            hello = await recv_within(edge.conn, 120)
            edge.pid = hello["pid"]
        log(f"{len(res.edges)} edge process(es) built {args.nodes} EdgeHubs in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        connect_timeout = 60 + 0.15 * args.nodes
        for edge in res.edges:
            edge.conn.send(("connect", connect_timeout))
        connected = with_node = 0
        for edge in res.edges:
            reply = await recv_within(edge.conn, connect_timeout + 30)
            connected += reply["connected"]
            with_node += reply["with_node"]
        hub_connected = (await asyncio.to_thread(cloudcore.samples)).get("kubage_cloudhub_connected_nodes", math.nan)
        connect_s = time.monotonic() - t
        log(
            f"edges connected: {connected}/{args.nodes} (cloudcore says {hub_connected:.0f}), "
            f"holding their Node: {with_node}, in {connect_s:.1f}s"
        )
        if connected < args.nodes or with_node < args.nodes:
            raise RuntimeError(f"only {connected} of {args.nodes} edges connected ({with_node} hold their Node)")
        rss_connected = rss_kib(cloudcore.process.pid)

        # pods
        arrivals: dict[str, float] = {}
        await collect(res.edges, arrivals)  # start from an empty slate
        watched: dict[str, float] = {}
        watcher = asyncio.create_task(watch_pods(kube, watched), name="bench.watch")
        await asyncio.sleep(0.5)  # the watch is open before the first create
        total = round(args.rate * (args.warmup + args.seconds))
        warm = round(args.rate * args.warmup)
        pods = {pod_name(i): PodTimes(nodes[i % len(nodes)], math.nan) for i in range(total)}
        pids = {
            "cloudcore": [cloudcore.process.pid],
            "apiserver": [p for p in [plane.pid("kube-apiserver")] if p],
            "etcd": [p for p in [plane.pid("etcd")] if p],
            "edges": [e.pid for e in res.edges],
            "bench": [os.getpid()],
        }
        loop = asyncio.get_running_loop()
        start_at = loop.time() + 0.2
        log(f"creating {total} pods at {args.rate}/s ({warm} warm-up) over {args.nodes} nodes")
        creator = asyncio.create_task(create_pods(kube, pods, args.rate, args.concurrency, start_at=start_at))
        await asyncio.sleep(max(0.0, start_at + args.warmup - loop.time()))
        cpu0, wall0, runq0 = cpu_sample(pids), time.perf_counter(), runq_seconds(cloudcore.process.pid)
        await creator
        cpu1, wall1, runq1 = cpu_sample(pids), time.perf_counter(), runq_seconds(cloudcore.process.pid)
        window = wall1 - wall0
        created = {n for n, p in pods.items() if not math.isnan(p.t1)}
        drain_deadline = time.monotonic() + args.drain_timeout
        stats = await collect(res.edges, arrivals)
        while not created.issubset(arrivals) and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.25)
            stats = await collect(res.edges, arrivals)
        metrics = await asyncio.to_thread(cloudcore.samples)
        rss_end = rss_kib(cloudcore.process.pid)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        await kube.close()

    # results
    names = list(pods)
    measured = [n for n in names[warm:] if n in created]
    api = [pods[n].t1 - pods[n].t0 for n in measured]
    dispatch = [arrivals[n] - pods[n].t1 for n in measured if n in arrivals]
    watch = [watched[n] - pods[n].t1 for n in measured if n in watched]
    lost = sum(1 for n in measured if n not in arrivals)
    lost_all = sum(1 for n in created if n not in arrivals)
    errors = [p.error for p in pods.values() if p.error]
    lag = [pods[n].t0 - pods[n].scheduled for n in names if n in created]
    negative = sum(1 for d in dispatch if d < 0)
    cpu = {k: 100 * (cpu1[k] - cpu0[k]) / window for k in cpu0}

    rows = [
        ("nodes (edges)", f"{args.nodes} in {len(res.edges)} process(es), connected in {connect_s:.1f}s"),
        ("rate", f"{args.rate:g} pod creations/s for {args.seconds:g}s after {args.warmup:g}s warm-up"),
        ("pods measured", f"{len(measured)} ({len(errors)} creates failed)"),
        ("API create latency (ms)", triple(api, (50, 90, 99))),
        ("create -> edge ack (ms)", triple(dispatch, (50, 90, 99)) + f"  max {fmt(max(dispatch, default=math.nan))}"),
        ("  of which negative", f"{negative} (watch event before the POST's response)"),
        ("create -> own watch (ms)", triple(watch, (50, 90, 99)) + f"  max {fmt(max(watch, default=math.nan))}"),
        ("pods lost", f"{lost} measured, {lost_all} in all (after {args.drain_timeout:g}s drain)"),
        ("pacer lag (ms)", f"p99 {fmt(percentile(lag, 99))}  max {fmt(max(lag, default=math.nan))}"),
        ("cloudcore RSS", f"{rss_connected / 1024:.1f} MiB connected, {rss_end / 1024:.1f} MiB at the end"),
        ("CPU % of a core", "  ".join(f"{k} {v:.0f}" for k, v in cpu.items())),
        ("cloudcore runq %", f"{100 * (runq1 - runq0) / window:.0f} (waiting for a CPU; high = noisy machine)"),
        (
            "edge sessions",
            f"{stats['sessions']} for {args.nodes} edges, {stats['connected']} connected at the end, "
            f"{stats['rejected']} rejected",
        ),
        (
            "cloudhub",
            f"acked {metrics.get('kubage_cloudhub_acked_messages_total', math.nan):.0f}, "
            f"retransmits {metrics.get('kubage_cloudhub_retransmits_total', math.nan):.0f}, "
            f"sessions {metrics.get('kubage_cloudhub_sessions_total', math.nan):.0f}",
        ),
        ("loop", loop_name()),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    if errors:
        print(f"first create error: {errors[0]}")
    print(
        json.dumps(
            {
                "bench": "dispatch",
                "nodes": args.nodes,
                "rate_per_s": args.rate,
                "pods": len(measured),
                "api_create_p50_ms": ms(percentile(api, 50)),
                "api_create_p99_ms": ms(percentile(api, 99)),
                "p50_ms": ms(percentile(dispatch, 50)),
                "p99_ms": ms(percentile(dispatch, 99)),
                "lost": lost,
            }
        ),
        flush=True,
    )
    return 0


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if not math.isnan(seconds) else "-"


def triple(values: list[float], qs: tuple[int, ...]) -> str:
    return "  ".join(f"p{q} {fmt(percentile(values, q))}" for q in qs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="edge nodes, each a hollow EdgeHub (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="pod creations per second (default 20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds of creations (default 30)")
    parser.add_argument("--processes", type=int, default=1, help="child processes for the edges (default 1)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of creations not measured (default 5)")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight at most (default 16)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="wait for stragglers (default 30)")
    parser.add_argument("--lease-interval", type=float, default=10.0, help="cloudcore leaseRenewInterval (10)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.rate <= 0 or args.seconds <= 0 or args.processes < 1 or args.warmup < 0:
        parser.error("--nodes, --rate, --seconds and --processes must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    res = Resources()

    def body() -> int:
        t = time.perf_counter()
        res.plane = ControlPlane.up(workdir / "control-plane")
        log(f"control plane up in {time.perf_counter() - t:.1f}s ({res.plane.state_dir})")
        return run(bench(args, workdir, res.plane, res))

    def show_logs() -> None:
        log_tails([res.cloudcore])
        for k in range(args.processes):
            with contextlib.suppress(OSError):
                tail = (workdir / f"edges-{k}.log").read_text(errors="replace").splitlines()[-10:]
                log(f"edges-{k}.log tail:\n" + "\n".join(tail))

    def teardown() -> None:
        res.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    return guarded(body, teardown=teardown, show_logs=show_logs, started=started)


if __name__ == "__main__":
    sys.exit(main())
