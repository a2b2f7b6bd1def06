"""TLS churn: does a server's memory grow with every reconnect, and is the growth CloudHub's or the platform's?

The soak (``soak.py``) sees CloudCore's RSS step up at each tunnel cut. This benchmark takes the cut on its own,
without the control plane, so that the same churn can be put to three servers in turn, each in a fresh child
process and on loopback:

  (a) CloudHub, on uvloop (what ``cloudcore`` runs), its clients ``--connections`` hollow edges (real EdgeHubs,
      an in-memory MetaStore each, ``reconnect.py``'s child) that reconnect with their backoff;
  (b) a bare mutual-TLS websockets server on uvloop, the same TLS, library and limits, no kubage code, its
      clients as many bare websockets clients that reconnect 0.2 s after losing the connection;
  (c) the same bare server on asyncio's own loop.

A cut: the server aborts every connection at once (as a network reset would) and waits until every client is
back, collects garbage, and samples its RSS. ``--cuts`` cuts each. Reported per server: RSS after the first cut
and after the last, and the growth per cut (the least-squares slope over the cuts after ``--warmup-cuts``), also
per reconnect. Prints a table, writes ``tls_churn.png`` (RSS per cut) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from benchmarks.dispatch import node_name, node_pki
from benchmarks.reconnect import EdgeProcess, ask_all, start_edges
from benchmarks.support import guarded, log, recv_within, rss_kib, slope, stop_child, table
from benchmarks.tunnel import echo_client
from cloudcore.cloudhub.hub import CloudHub, HubSettings
from common.logging import configure_logging
from common.loop import run
from common.tls import client_context, server_context
from scripts.harness.pki import Pki

SERVERS = ("cloudhub", "websockets-uvloop", "websockets-asyncio")
RECONNECT_S = 0.2  # the bare clients' pause before they reconnect


# --- the server child -----------------------------------------------------------------------------------------


def server_child(conn: Connection, kind: str, files: tuple[str, str, str], connections: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to stop
    configure_logging("warning", stream=sys.stderr)
    run(_server_child(conn, kind, files, connections), use_uvloop=kind != "websockets-asyncio")


async def _server_child(conn: Connection, kind: str, files: tuple[str, str, str], connections: int) -> None:
    ssl_context = server_context(*files)
    live: set[ServerConnection] = set()

    async def bare(ws: ServerConnection) -> None:
        live.add(ws)
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            live.discard(ws)

    async with contextlib.AsyncExitStack() as stack:
        if kind == "cloudhub":
            settings = HubSettings(host="127.0.0.1", port=0, node_limit=connections + 10, keepalive_interval=15)
            hub = CloudHub(ssl_context=ssl_context, settings=settings)
            serving = asyncio.create_task(hub.serve(), name="bench.cloudhub")
            stack.callback(serving.cancel)
            port = await hub.wait_serving()

            def connected() -> int:
                return len(hub.connected_nodes())

            def cut() -> None:
                for _, entry in list(hub.registry.entries()):
                    entry.link.ws.transport.abort()

        else:
            server = await stack.enter_async_context(
                serve(bare, "127.0.0.1", 0, ssl=ssl_context, compression=None, ping_interval=None, max_queue=16)
            )
            port = next(iter(server.sockets)).getsockname()[1]

            def connected() -> int:
                return len(live)

            def cut() -> None:
                for ws in list(live):
                    ws.transport.abort()

        conn.send({"port": port, "pid": os.getpid()})
        with contextlib.suppress(EOFError, TimeoutError):
            while (command := await recv_within(conn, 3600))[0] != "stop":
                if command[0] == "cut":
                    cut()
                    await asyncio.sleep(0.5)  # the aborted connections' handlers end
                deadline = time.monotonic() + 120
                while connected() < connections and time.monotonic() < deadline:  # noqa: ASYNC110 - counts, no event
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # the last handshakes settle
                gc.collect()
                conn.send({"connected": connected(), "rss_kib": rss_kib()})


# --- the bare clients' child ----------------------------------------------------------------------------------


def bare_clients_child(conn: Connection, port: int, pki_dir: str, nodes: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(_bare_clients(conn, port, Path(pki_dir), nodes))


async def _bare_clients(conn: Connection, port: int, pki_dir: Path, nodes: list[str]) -> None:
    async def client(node: str) -> None:
        ssl_context = client_context(pki_dir / f"node-{node}.crt", pki_dir / f"node-{node}.key", pki_dir / "ca.crt")
        while True:
            with contextlib.suppress(Exception):  # refused, reset, timed out: try again, as an edge would
                ws = await echo_client(port, ssl_context)
                async for _ in ws:
                    pass
            await asyncio.sleep(RECONNECT_S)

    tasks = [asyncio.create_task(client(node)) for node in nodes]
    conn.send({"pid": os.getpid()})
    with contextlib.suppress(EOFError, TimeoutError):
        await recv_within(conn, 3600)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the benchmark -----------------------------------------------------------------------------------------


class Children:
    def __init__(self) -> None:
        self.processes: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self.edges: list[EdgeProcess] = []

    def stop(self) -> None:
        for edge in self.edges:
            stop_child(edge.process, edge.conn, timeout=30)
        for process, conn in reversed(self.processes):
            stop_child(process, conn, timeout=30)
        self.edges, self.processes = [], []


def spawn(children: Children, target: Any, *args: Any, name: str) -> Connection:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), name=name)
    process.start()
    child.close()
    children.processes.append((process, parent))
    return parent


async def churn(args: argparse.Namespace, kind: str, pki: Pki, workdir: Path, children: Children) -> list[int]:
    """RSS of the server after each cut (the first sample: before any)."""
    nodes = [node_name(i) for i in range(args.connections)]
    pki_dir = pki.directory
    server = spawn(children, server_child, kind, pki.server_files, args.connections, name=f"bench-churn-{kind}")
    hello = await recv_within(server, 60)
    if kind == "cloudhub":
        options = argparse.Namespace(processes=1)
        children.edges = start_edges(options, nodes, pki_dir, hello["port"], workdir, lifetime=3600)
        for edge in children.edges:
            await recv_within(edge.conn, 120)
        await ask_all(children.edges, "connect", 120, timeout=150)
    else:
        clients = spawn(children, bare_clients_child, hello["port"], str(pki_dir), nodes, name="bench-churn-clients")
        await recv_within(clients, 60)
    samples: list[int] = []
    for cut in range(args.cuts + 1):
        server.send(("cut",) if cut else ("sample",))
        reply = await recv_within(server, 180)
        if reply["connected"] < args.connections:
            raise RuntimeError(f"{kind}: {reply['connected']}/{args.connections} back after cut {cut}")
        samples.append(reply["rss_kib"])
        log(f"{kind}: cut {cut}: {reply['rss_kib'] / 1024:.1f} MiB")
    children.stop()
    return samples


def per_cut(samples: list[int], warmup: int) -> float:
    """KiB per cut: the slope through the samples after the warm-up cuts."""
    return slope([(float(i), float(kib)) for i, kib in enumerate(samples) if i > warmup])


def plot(results: dict[str, list[int]], path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the picture

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log(f"matplotlib not installed: no {path}")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for kind, samples in results.items():
        ax.plot(range(len(samples)), [kib / 1024 for kib in samples], marker="o", label=kind)
    ax.set_xlabel("cuts (every connection reset, every client back)")
    ax.set_ylabel("server RSS (MiB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


async def bench(args: argparse.Namespace, workdir: Path, children: Children) -> int:
    nodes = [node_name(i) for i in range(args.connections)]
    pki = await asyncio.to_thread(node_pki, workdir / "pki", nodes)
    results = {kind: await churn(args, kind, pki, workdir, children) for kind in args.servers}
    n = args.connections
    rows = [("churn", f"{n} connections, {args.cuts} cuts, slope after cut {args.warmup_cuts}")]
    line: dict[str, Any] = {"bench": "tls_churn", "connections": n, "cuts": args.cuts}
    for kind, samples in results.items():
        growth = per_cut(samples, args.warmup_cuts)
        rows.append(
            (
                f"{kind} RSS, MiB",
                f"{samples[1] / 1024:.1f} after the first cut, {samples[-1] / 1024:.1f} after the last: "
                f"{growth:+.0f} KiB per cut, {growth * 1024 / n:+.0f} bytes per reconnect",
            )
        )
        line[f"{kind.replace('-', '_')}_kib_per_cut"] = round(growth, 1)
    print()
    print(table(rows))
    plot(results, args.plot)
    print(json.dumps(line), flush=True)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200, help="clients of each server (default 200)")
    parser.add_argument("--cuts", type=int, default=12, help="cuts per server (default 12)")
    parser.add_argument("--warmup-cuts", type=int, default=2, help="cuts not in the slope (default 2)")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="which, in order")
    parser.add_argument("--plot", type=Path, default=Path("tls_churn.png"), help="where to write the plot")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.cuts <= args.warmup_cuts + 1:
        parser.error("--connections must be positive and --cuts at least --warmup-cuts + 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="bench-churn-"))

    def body() -> int:
        return run(bench(args, workdir, children))

    def teardown() -> None:
        children.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    return guarded(body, teardown=teardown, show_logs=lambda: None, started=started)


if __name__ == "__main__":
    sys.exit(main())
