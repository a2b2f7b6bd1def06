"""Reconnect storm: CloudCore killed and restarted under a fleet while some of what the fleet holds changes.

One run, everything real and on loopback:

  * its own control plane (etcd + kube-apiserver) and the real ``cloudcore`` command, with a throwaway PKI;
  * ``--nodes`` hollow edges (real EdgeHubs over mutual TLS, an in-memory MetaStore each) in ``--processes``
    child processes, each holding ``--objects`` objects: its Node and ``--objects - 1`` pods bound to it;
  * once every edge holds all of them, CloudCore is SIGKILLed; while it is down ``--change`` of the objects
    (pods picked at random) get a new label; then CloudCore is started again, on the same ports.

Measured from the restart:

  * ``resync_s``: until every edge has a session again and holds each changed pod at its new resourceVersion;
  * the true difference: the objects whose resourceVersion at the edge differs from before the kill (the changed
    pods, and whatever else changed meanwhile, such as a Node), counted, and sized as the message each needs,
    once; ``messages_ratio`` and ``bytes_ratio``: the object messages the edges actually received (duplicates
    and retransmits included) ÷ that; ``wire_ratio``: every frame they received, welcomes, acks and the
    keepalives of the whole window included, ÷ that;
  * ``api_requests``: the requests the restarted CloudCore sent the API server (its ``kubage_kube_requests``),
    by verb and resource; the LISTs and WATCHes should not grow with the edge count, node lease renewals (one
    per node, as every kubelet's) do. The API server's own counter, all its clients, is shown beside it;
  * a histogram of when each edge had its session back (``reconnect.png``), the backoff spread.

The run prints a table and, as the last line of stdout, one JSON line. Everything it starts is stopped, and the
temp dir removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dispatch import bounded_gather, create_nodes, node_name, node_pki
from benchmarks.support import guarded, log, log_tails, recv_within, stop_child, table
from cloudcore.kube import Kube
from common.logging import configure_logging
from common.loop import run
from common.messages import NodeName, to_dict
from common.protocol.session import Deliver, EdgeSession, Event
from common.tls import client_context
from edgecore.edgehub import EdgeHub, EdgeHubSettings
from edgecore.metamanager.store import Change, MetaStore
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.services import CloudCoreProcess
from scripts.harness.stats import percentile

NAMESPACE = "bench-reconnect"
IMAGE = "localhost/busybox:1.35"
KEEPALIVE_S = 15.0  # EdgeHub's and CloudHub's default
CONNECT_BATCH = 100  # edges started at once in each child: a TLS handshake storm would only time out and retry
APISERVER_REQUESTS = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
CLOUDCORE_REQUESTS = re.compile(r"^kubage_kube_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def pod_name(node: int, k: int) -> str:
    return f"bench-{node:04d}-{k:02d}"


# --- hollow edges (child processes) --------------------------------------------------------------------------


class CountingEdgeHub(EdgeHub):
    """An EdgeHub that remembers how big each delivered message was, as it was on the wire: the size of the
    true difference is the size of the messages that carry it, once each."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message_bytes: dict[str, int] = {}  # the last message per resource
        self.delivered_bytes = 0  # every object message, duplicates and retransmits included

    async def _on_events(self, session: EdgeSession, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Deliver):
                size = len(orjson.dumps(to_dict(event.message)))
                self.message_bytes[event.message.route.resource] = size
                self.delivered_bytes += size
        await super()._on_events(session, events)


@dataclass
class HollowEdge:
    hub: CountingEdgeHub
    store: MetaStore
    held: dict[str, str] = field(default_factory=dict)  # resource → resourceVersion, as committed
    before: dict[str, str] = field(default_factory=dict)
    wire_before: tuple[int, int, int, int] = (0, 0, 0, 0)  # bytes received, sent, messages and bytes delivered
    targets: dict[str, str] = field(default_factory=dict)
    back_at: float = math.nan  # wall time its session was back after the kill
    resynced_at: float = math.nan
    storm: bool = False

    def on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            if change.operation == "delete":
                self.held.pop(change.resource, None)
            else:
                self.held[change.resource] = change.resource_version
        self.check()

    def on_connection(self, connected: bool) -> None:
        if connected and self.storm and math.isnan(self.back_at):
            self.back_at = time.time()
            self.check()

    def check(self) -> None:
        if not self.storm or math.isnan(self.back_at) or not math.isnan(self.resynced_at):
            return
        if all(newer_or_same(self.held.get(resource), rv) for resource, rv in self.targets.items()):
            self.resynced_at = time.time()


def newer_or_same(held: str | None, target: str) -> bool:
    """The edge holds ``target`` or a later version (CloudCore itself may have changed the object since).
    resourceVersions are opaque to clients; etcd's are integers, and this benchmark runs its own etcd."""
    return held is not None and held.isdigit() and int(held) >= int(target)


def edge_child(conn: Connection, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to stop
    with open(spec["log"], "a") as log_stream:
        configure_logging("info", stream=log_stream, json=True)
        run(_edge_child(conn, spec))


async def _edge_child(conn: Connection, spec: dict[str, Any]) -> None:
    deadline = time.monotonic() + spec["lifetime"]
    edges: dict[str, HollowEdge] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        pki = Path(spec["pki"])
        for node in spec["nodes"]:
            store = await MetaStore.open(":memory:")
            hub = CountingEdgeHub(
                settings=EdgeHubSettings(
                    server=f"127.0.0.1:{spec['port']}",
                    node_name=NodeName(node),
                    keepalive_interval=KEEPALIVE_S,
                    close_timeout=0.5,
                ),
                ssl_context=client_context(pki / f"node-{node}.crt", pki / f"node-{node}.key", pki / "ca.crt"),
                store=store,
            )
            edge = edges[node] = HollowEdge(hub, store)
            hub.add_change_listener(edge.on_changes)
            hub.add_connection_listener(edge.on_connection)
        conn.send({"pid": os.getpid(), "edges": len(edges)})
        while True:
            command = await recv_within(conn, max(1.0, deadline - time.monotonic()))
            verb = command[0]
            if verb == "stop":
                break
            if verb == "connect":
                hubs = [e.hub for e in edges.values()]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(command[1]):
                        for start in range(0, len(hubs), CONNECT_BATCH):
                            batch = hubs[start : start + CONNECT_BATCH]
                            tasks.extend(
                                asyncio.create_task(h.run(), name=f"edge.{h.settings.node_name}") for h in batch
                            )
                            await asyncio.gather(*(h.connected.wait() for h in batch))
                conn.send({"connected": sum(h.connected.is_set() for h in hubs)})
            elif verb == "held":  # how many objects each edge holds (the parent waits for all of them)
                conn.send({"objects": sum(len(e.held) for e in edges.values())})
            elif verb == "mark":  # the moment before the kill
                for edge in edges.values():
                    edge.before = dict(edge.held)
                    hub = edge.hub
                    edge.wire_before = (hub.bytes_received, hub.bytes_sent, hub.delivered, hub.delivered_bytes)
                    edge.storm = True
                conn.send({"ok": True})
            elif verb == "targets":
                for node, targets in command[1].items():
                    edges[node].targets = targets
                for edge in edges.values():
                    edge.check()
                conn.send({"ok": True})
            elif verb == "progress":
                conn.send(
                    {
                        "back": sum(not math.isnan(e.back_at) for e in edges.values()),
                        "resynced": sum(not math.isnan(e.resynced_at) for e in edges.values()),
                        "delivered": sum(e.hub.delivered - e.wire_before[2] for e in edges.values()),
                    }
                )
            elif verb == "report":
                conn.send(report(edges))
    except (TimeoutError, EOFError, OSError):
        pass  # the parent went away or the lifetime is up: stop all the same
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for edge in edges.values():
            with contextlib.suppress(Exception):
                await edge.store.close()


def report(edges: dict[str, HollowEdge]) -> dict[str, Any]:
    diff_objects = diff_bytes = 0
    kinds: collections.Counter[str] = collections.Counter()
    for edge in edges.values():
        for resource in edge.before.keys() | edge.held.keys():
            if edge.before.get(resource) != edge.held.get(resource):
                diff_objects += 1
                diff_bytes += edge.hub.message_bytes.get(resource, 0)
                kinds[resource.split("/")[1]] += 1
    return {
        "back_at": [e.back_at for e in edges.values()],
        "resynced_at": [e.resynced_at for e in edges.values()],
        "received": sum(e.hub.bytes_received - e.wire_before[0] for e in edges.values()),
        "sent": sum(e.hub.bytes_sent - e.wire_before[1] for e in edges.values()),
        "delivered": sum(e.hub.delivered - e.wire_before[2] for e in edges.values()),
        "delivered_bytes": sum(e.hub.delivered_bytes - e.wire_before[3] for e in edges.values()),
        "diff_objects": diff_objects,
        "diff_bytes": diff_bytes,
        "diff_kinds": dict(kinds),
        "sessions": sum(e.hub.sessions for e in edges.values()),
    }


@dataclass
class EdgeProcess:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    nodes: list[str]

    async def ask(self, *command: Any, timeout: float = 60) -> Any:  # noqa: ASYNC109
        self.conn.send(command)
        return await recv_within(self.conn, timeout)


async def ask_all(edges: list[EdgeProcess], *command: Any, timeout: float = 60) -> list[Any]:  # noqa: ASYNC109
    for edge in edges:
        edge.conn.send(command)
    return [await recv_within(edge.conn, timeout) for edge in edges]


def start_edges(
    args: argparse.Namespace, nodes: list[str], pki_dir: Path, port: int, workdir: Path, *, lifetime: float = 0.0
) -> list[EdgeProcess]:
    """``args.processes`` children holding ``nodes`` between them; each stops by itself after ``lifetime``
    seconds (default: long enough for this benchmark) if the parent has not stopped it."""
    ctx = multiprocessing.get_context("spawn")
    per = math.ceil(len(nodes) / args.processes)
    out = []
    for k in range(args.processes):
        chunk = nodes[k * per : (k + 1) * per]
        if not chunk:
            continue
        parent, child = ctx.Pipe()
        spec = {
            "nodes": chunk,
            "pki": str(pki_dir),
            "port": port,
            "lifetime": lifetime or 600 + 0.5 * len(nodes),
            "log": str(workdir / f"edges-{k}.log"),
        }
        process = ctx.Process(target=edge_child, args=(child, spec), name=f"bench-reconnect-edges-{k}")
        process.start()
        child.close()
        out.append(EdgeProcess(process, parent, chunk))
    return out


# --- the benchmark -------------------------------------------------------------------------------------------


@dataclass
class Resources:
    plane: ControlPlane | None = None
    cloudcore: CloudCoreProcess | None = None
    edges: list[EdgeProcess] = field(default_factory=list)

    def stop(self) -> None:
        for edge in self.edges:
            with contextlib.suppress(OSError):
                edge.conn.send(("stop",))
        for edge in self.edges:
            stop_child(edge.process, edge.conn, timeout=30)
        if self.cloudcore is not None:
            self.cloudcore.stop()
        if self.plane is not None:
            self.plane.down()


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench-reconnect"}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": IMAGE}]},
    }


def requests_in(metrics: str, pattern: re.Pattern[str]) -> collections.Counter[tuple[str, str]]:
    """A request counter in Prometheus text, summed by (verb, resource)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in metrics.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource = f"{resource}/{labels['subresource']}"
        counts[labels.get("verb", ""), resource] += int(float(match["value"]))
    return counts


async def mark_ready(kube: Kube, nodes: list[str]) -> None:
    """Report each hollow node Ready once, as its kubelet would; CloudCore renews the node leases from then on.
    Without it the node-lifecycle controller marks the nodes NotReady, and CloudCore's pod autonomy rewrites
    every pod on them, which is not the storm being measured. (Hollow edges send no node status.)"""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow edge"}
    body = {"status": {"conditions": [{**ready, "lastHeartbeatTime": now, "lastTransitionTime": now}]}}

    async def patch(node: str) -> None:
        await kube.request(
            "PATCH", f"/api/v1/nodes/{node}/status", body=body, content_type="application/strategic-merge-patch+json"
        )

    await bounded_gather([patch(n) for n in nodes], 32)


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.5) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def bench(args: argparse.Namespace, workdir: Path, plane: ControlPlane, res: Resources) -> int:
    nodes = [node_name(i) for i in range(args.nodes)]
    pods_per_node = args.objects - 1
    t = time.monotonic()
    pki = await asyncio.to_thread(node_pki, workdir / "pki", nodes)
    log(f"PKI with {len(nodes)} node certificates in {time.monotonic() - t:.1f}s")
    cloudcore = res.cloudcore = CloudCoreProcess(
        workdir / "cloudcore",
        kubeconfig=plane.kubeconfig,
        pki=pki,
        keepalive_interval=KEEPALIVE_S,
        node_limit=args.nodes + 10,
        lease_renew_interval=10,
    )
    cloudcore.start()
    kube = await Kube.connect(str(plane.kubeconfig))
    try:
        await create_namespace(kube, NAMESPACE)
        t = time.monotonic()
        await create_nodes(kube, nodes)
        await mark_ready(kube, nodes)
        await cloudcore.wait_ready(timeout=120)
        # The edges connect before the pods exist, so that CloudCore renews their leases from the start and the
        # nodes stay Ready: pods of a NotReady node would be rewritten by CloudCore's pod autonomy.
        res.edges = start_edges(args, nodes, pki.directory, cloudcore.port, workdir)
        for edge in res.edges:
            await recv_within(edge.conn, 120)
        connect_timeout = 60 + 0.15 * args.nodes
        connected = sum(
            r["connected"] for r in await ask_all(res.edges, "connect", connect_timeout, timeout=connect_timeout + 30)
        )
        if connected < args.nodes:
            raise RuntimeError(f"only {connected} of {args.nodes} edges connected")
        log(f"{len(nodes)} Nodes created, Ready, and their edges connected in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        pods = [(pod_name(i, k), node) for i, node in enumerate(nodes) for k in range(pods_per_node)]

        async def create(name: str, node: str) -> None:
            await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body(name, node))

        await bounded_gather([create(name, node) for name, node in pods], 32)
        log(f"{len(pods)} pods created in {time.monotonic() - t:.1f}s")
        expected = args.nodes * args.objects

        async def all_held() -> bool:
            return bool(sum(r["objects"] for r in await ask_all(res.edges, "held")) >= expected)

        await wait_for(f"{expected} objects at the edges", all_held, 120 + 0.05 * expected)
        log(f"{args.nodes} edges hold {expected} objects, {time.monotonic() - t:.1f}s after the first create")
        await asyncio.sleep(args.settle)  # the first lease renewals and node patches out of the way

        # the storm
        await ask_all(res.edges, "mark")
        t_kill = time.time()
        await asyncio.to_thread(cloudcore.kill)
        log(f"cloudcore killed (pid {cloudcore.process.pid})")
        rng = random.Random(args.seed)
        changed = rng.sample(pods, round(args.change * expected))
        targets: dict[str, dict[str, str]] = collections.defaultdict(dict)

        async def change(name: str, node: str) -> None:
            patched = await kube.request(
                "PATCH",
                f"/api/v1/namespaces/{NAMESPACE}/pods/{name}",
                body={"metadata": {"labels": {"bench-changed": "yes"}}},
                content_type="application/merge-patch+json",
            )
            targets[node][f"{NAMESPACE}/pod/{name}"] = patched["metadata"]["resourceVersion"]

        t = time.monotonic()
        await bounded_gather([change(name, node) for name, node in changed], 32)
        down_s = time.time() - t_kill
        log(f"{len(changed)} pods changed in {time.monotonic() - t:.1f}s while cloudcore was down")
        for edge in res.edges:  # before the restart: an edge is not resynced until it holds these
            await edge.ask("targets", {n: targets.get(n, {}) for n in edge.nodes})
        apiserver_before = requests_in(await kube.get_text("/metrics"), APISERVER_REQUESTS)
        t_restart = time.time()
        cloudcore.start()
        await cloudcore.wait_ready(timeout=120)
        ready_s = time.time() - t_restart
        log(f"cloudcore restarted (pid {cloudcore.process.pid}), ready after {ready_s:.1f}s")

        async def all_resynced() -> bool:
            progress = await ask_all(res.edges, "progress")
            return bool(sum(p["resynced"] for p in progress) >= args.nodes)

        with contextlib.suppress(RuntimeError):
            await wait_for("every edge resynced", all_resynced, args.timeout, interval=0.1)

        async def quiet() -> bool:  # nothing delivered for a second: the storm is over
            first = int(sum(p["delivered"] for p in await ask_all(res.edges, "progress")))
            await asyncio.sleep(1.0)
            return int(sum(p["delivered"] for p in await ask_all(res.edges, "progress"))) == first

        with contextlib.suppress(RuntimeError):
            await wait_for("the storm to end", quiet, 60, interval=0)
        apiserver = requests_in(await kube.get_text("/metrics"), APISERVER_REQUESTS) - apiserver_before
        requests = requests_in(await asyncio.to_thread(cloudcore.metrics), CLOUDCORE_REQUESTS)
        storm_s = time.time() - t_restart
        reports = await ask_all(res.edges, "report")
    finally:
        await kube.close()

    # results
    back = sorted(x - t_restart for r in reports for x in r["back_at"] if not math.isnan(x))
    resynced = sorted(x - t_restart for r in reports for x in r["resynced_at"] if not math.isnan(x))
    received = sum(r["received"] for r in reports)
    delivered_bytes = sum(r["delivered_bytes"] for r in reports)
    hello = sum(r["sent"] for r in reports)
    delivered = sum(r["delivered"] for r in reports)
    diff_objects = sum(r["diff_objects"] for r in reports)
    diff_bytes = sum(r["diff_bytes"] for r in reports)
    kinds: collections.Counter[str] = collections.Counter()
    for r in reports:
        kinds.update(r["diff_kinds"])
    apiserver.pop(("GET", ""), None)  # this benchmark's own /metrics scrape
    lists = sum(v for (verb, _), v in requests.items() if verb == "LIST")
    watches = sum(v for (verb, _), v in requests.items() if verb == "WATCH")
    leases = sum(v for (_, resource), v in requests.items() if resource == "leases")
    total_requests = sum(requests.values())
    resync_s = max(resynced) if len(resynced) == args.nodes else math.nan
    bytes_ratio = delivered_bytes / diff_bytes if diff_bytes else math.nan
    wire_ratio = received / diff_bytes if diff_bytes else math.nan
    messages_ratio = delivered / diff_objects if diff_objects else math.nan
    plot(back, resynced, args.plot)

    rows = [
        ("fleet", f"{args.nodes} edges in {len(res.edges)} process(es), {args.objects} objects each ({expected})"),
        ("storm", f"cloudcore down {down_s:.1f}s while {len(changed)} pods changed ({100 * args.change:g} %)"),
        ("cloudcore ready after restart", f"{ready_s:.1f} s"),
        ("sessions back (s after restart)", spread(back, args.nodes)),
        ("resynced (s after restart)", spread(resynced, args.nodes)),
        ("true difference", f"{diff_objects} objects ({fmt_kinds(kinds)}), {diff_bytes / 1024:.0f} KiB as messages"),
        (
            "edges received",
            f"{delivered} object messages, {delivered_bytes / 1024:.0f} KiB"
            f" (x{messages_ratio:.2f}, x{bytes_ratio:.2f})",
        ),
        (
            "  all frames, keepalives too",
            f"{received / 1024:.0f} KiB (x{wire_ratio:.2f}), over {storm_s:.0f}s with a {KEEPALIVE_S:g}s keepalive",
        ),
        ("edges sent (hellos, acks)", f"{hello / 1024:.0f} KiB, {hello / max(1, args.nodes):.0f} B per edge"),
        (
            "CloudCore's API requests",
            f"{total_requests} in {storm_s:.1f}s: {lists} LIST, {watches} WATCH, {leases} on leases",
        ),
        ("  by verb and resource", ", ".join(f"{v} {k[0]} {k[1] or '-'}" for k, v in requests.most_common(8))),
        (
            "API server, all its clients",
            f"{sum(apiserver.values())} (the controller-manager and scheduler too): "
            + ", ".join(f"{v} {k[0]} {k[1] or '-'}" for k, v in apiserver.most_common(5)),
        ),
    ]
    print()
    print(table(rows))
    print(
        json.dumps(
            {
                "bench": "reconnect",
                "nodes": args.nodes,
                "objects": expected,
                "changed": len(changed),
                "resync_s": round(resync_s, 2),
                "ready_s": round(ready_s, 2),
                "bytes_ratio": round(bytes_ratio, 3),
                "messages_ratio": round(messages_ratio, 3),
                "wire_ratio": round(wire_ratio, 3),
                "api_requests": total_requests,
                "api_lists": lists,
                "api_watches": watches,
                "api_lease_requests": leases,
                "apiserver_requests_all_clients": sum(apiserver.values()),
                "hello_bytes_per_edge": round(hello / max(1, args.nodes)),
            }
        ),
        flush=True,
    )
    return 0 if not math.isnan(resync_s) else 1


def spread(values: list[float], expected: int) -> str:
    if not values:
        return f"none of {expected}"
    q = "  ".join(f"p{p} {percentile(values, p):.2f}" for p in (10, 50, 90))
    return f"{q}  max {max(values):.2f}  ({len(values)}/{expected})"


def fmt_kinds(kinds: collections.Counter[str]) -> str:
    return ", ".join(f"{v} {k}" for k, v in kinds.most_common()) or "-"


def plot(back: list[float], resynced: list[float], path: Path) -> None:
    """When each edge had its session back and when it was resynced, seconds after the restart."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the picture

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log("matplotlib not installed: no reconnect.png")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = 40
    ax.hist(back, bins=bins, alpha=0.6, label="session back")
    ax.hist(resynced, bins=bins, alpha=0.6, label="resynced")
    ax.set_xlabel("seconds after CloudCore restarted")
    ax.set_ylabel("edges")
    ax.set_title(f"Reconnect storm: {len(back)} edges")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="hollow edges (default 1000)")
    parser.add_argument("--objects", type=int, default=20, help="objects each edge holds: its Node and pods (20)")
    parser.add_argument("--change", type=float, default=0.05, help="share of the objects changed (default 0.05)")
    parser.add_argument("--processes", type=int, default=2, help="child processes for the edges (default 2)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before the kill (default 5)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on the resync after (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="which pods change")
    parser.add_argument("--plot", type=Path, default=None, help="where to write the histogram (reconnect.png)")
    parser.add_argument("--keep-log", type=Path, default=None, help="copy cloudcore's log here at the end")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.objects < 2 or not 0 < args.change < 1 or args.processes < 1:
        parser.error("--nodes ≥ 1, --objects ≥ 2, 0 < --change < 1, --processes ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot is None:
        args.plot = Path.cwd() / "reconnect.png"
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-reconnect-"))
    res = Resources()

    def body() -> int:
        t = time.perf_counter()
        res.plane = ControlPlane.up(workdir / "control-plane")
        log(f"control plane up in {time.perf_counter() - t:.1f}s")
        return run(bench(args, workdir, res.plane, res))

    def show_logs() -> None:
        log_tails([res.cloudcore])
        for k in range(args.processes):
            with contextlib.suppress(OSError):
                tail = (workdir / f"edges-{k}.log").read_text(errors="replace").splitlines()[-10:]
                log(f"edges-{k}.log tail:\n" + "\n".join(tail))

    def teardown() -> None:
        res.stop()
        if args.keep_log is not None:
            with contextlib.suppress(OSError):
                shutil.copy(workdir / "cloudcore" / "cloudcore.log", args.keep_log)
        shutil.rmtree(workdir, ignore_errors=True)

    return guarded(body, teardown=teardown, show_logs=show_logs, started=started)


if __name__ == "__main__":
    sys.exit(main())
