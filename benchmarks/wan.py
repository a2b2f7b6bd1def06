"""WAN benchmark: acked cloud→edge messages/s to one node over slow and lossy links, against the bound of
KubeEdge's one message in flight per node (stop-and-wait: one message per round trip).

One run, mutual TLS, the CloudHub in a spawned child process (as in benchmarks/tunnel.py), one EdgeHub here
applying every object to its SQLite store before it acks, and between them the tests' fault proxy
(tests/faultproxy.py), which delays each direction by half the round trip. Links: loopback, 10 ms RTT (the
seed's aggregation layer), 50 ms and 150 ms, and 10 ms with 1 % packet loss. The proxy carries bytes, not
packets, so loss is modelled as TCP shows it to the application: each 1,448-byte packet's worth is lost with
probability 1 %, and its chunk and everything behind it arrive one retransmission timeout (200 ms, Linux's
minimum) late. The bound is computed (1 / RTT), not measured: it is what a stop-and-wait link could at best do.
Prints a table and, last, one JSON line (``vs_stop_and_wait_10ms`` is the headline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.support import recv_within, stop_child, table
from benchmarks.tunnel import cancel_all, make_edge, node_name, start_cloud
from common.loop import loop_name, run
from common.protocol.reliable import DEFAULT_WINDOW
from edgecore.metamanager.store import MetaStore
from scripts.harness.pki import Pki
from tests.faultproxy import FaultProxy

LINKS = [  # (name, round trip in seconds, packet loss rate)
    ("loopback", 0.0, 0.0),
    ("10 ms RTT", 0.010, 0.0),
    ("50 ms RTT", 0.050, 0.0),
    ("150 ms RTT", 0.150, 0.0),
    ("10 ms RTT, 1 % loss", 0.010, 0.01),
]


async def measure(args: argparse.Namespace, pki: Pki, workdir: Path) -> list[dict[str, Any]]:
    node = node_name(0)
    per_link = args.warmup + args.seconds
    process, conn = start_cloud(
        pki,
        node_limit=10,
        window=args.window,
        keepalive_interval=15.0,
        lifetime=len(LINKS) * (per_link + 30) + 60,
        cpus=None,
    )
    results: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []
    store: MetaStore | None = None
    try:
        hello = await recv_within(conn, 30)
        async with FaultProxy("127.0.0.1", hello["port"]) as proxy:
            store = await MetaStore.open(workdir / "edge.db")
            edge = make_edge(pki, proxy.port, node, store, 15.0)
            tasks = [asyncio.create_task(edge.run(), name="bench.wan.edge")]
            async with asyncio.timeout(30):
                await edge.connected.wait()
            for name, rtt, loss in LINKS:
                proxy.heal()
                proxy.delay(rtt / 2)
                proxy.loss(loss)
                losses = proxy.losses
                conn.send(("throughput", [node], args.payload_bytes, args.warmup, args.seconds))
                result: dict[str, Any] = await recv_within(conn, per_link + 60)
                bound = 1 / rtt if rtt else float("nan")
                results.append(
                    {
                        "link": name,
                        "rtt_ms": rtt * 1000,
                        "loss": loss,
                        "acked_per_s": result["per_s"],
                        "stop_and_wait_per_s": bound,
                        "vs_stop_and_wait": result["per_s"] / bound if rtt else float("nan"),
                        "retransmits": result["retransmits"],
                        "disconnects": result["disconnects"],
                        "stalls": proxy.losses - losses,
                    }
                )
                print(f"# {name}: {result['per_s']:,.0f} acked/s", file=sys.stderr, flush=True)
    finally:
        await cancel_all(tasks, 10)
        if store is not None:
            await store.close()
        stop_child(process, conn)
    return results


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-wan-") as tmp:
        pki = Pki(Path(tmp) / "pki")
        results = await measure(args, pki, Path(tmp))
    rows = [("link", "acked msgs/s   stop-and-wait bound   x bound   proxy stalls   retransmits")]
    for r in results:
        bound = "-" if r["rtt_ms"] == 0 else f"{r['stop_and_wait_per_s']:,.0f}"
        times = "-" if r["rtt_ms"] == 0 else f"{r['vs_stop_and_wait']:.1f}"
        rows.append(
            (r["link"], f"{r['acked_per_s']:<14,.0f} {bound:<21} {times:<9} {r['stalls']:<14} {r['retransmits']}")
        )
    rows += [
        ("window (messages in flight)", str(args.window)),
        ("payload bytes", str(args.payload_bytes)),
        ("seconds per link (after warm-up)", f"{args.seconds:g} (+{args.warmup:g})"),
        ("loop", loop_name()),
    ]
    print(table(rows))
    by = {r["link"]: r for r in results}
    line = {
        "bench": "wan",
        "vs_stop_and_wait_10ms": round(by["10 ms RTT"]["vs_stop_and_wait"], 1),
        "vs_stop_and_wait_50ms": round(by["50 ms RTT"]["vs_stop_and_wait"], 1),
        "vs_stop_and_wait_150ms": round(by["150 ms RTT"]["vs_stop_and_wait"], 1),
        "vs_stop_and_wait_10ms_1pct_loss": round(by["10 ms RTT, 1 % loss"]["vs_stop_and_wait"], 1),
        "acked_per_s": {r["link"]: round(r["acked_per_s"], 1) for r in results},
        "window": args.window,
        "payload_bytes": args.payload_bytes,
        "disconnects": sum(r["disconnects"] for r in results),
    }
    print(json.dumps(line))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per link")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per link before measuring")
    parser.add_argument("--payload-bytes", type=int, default=300, help="size of each pod's JSON content")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="the hub's messages in flight per node")
    return parser.parse_args(argv)


def main() -> None:
    run(main_async(parse_args()))


if __name__ == "__main__":
    main()
