"""Soak: does memory stay flat? A fleet under steady change, its tunnels cut every few minutes, for an hour.

One run, everything real and on loopback, not part of ``make test`` (it runs for ``--minutes``, an hour by
default):

  * its own control plane (etcd + kube-apiserver), a private mosquitto, the real ``cloudcore`` command;
  * the fault proxy (``tests/faultproxy.py``) in front of CloudHub: every edge connects through it, and every
    ``--cut-every`` seconds it resets every connection at once (the edges reconnect, with their backoff);
  * ``--nodes`` hollow edges (real EdgeHubs, an in-memory MetaStore each) in a child process, and one real
    ``edgecore`` process as a device-only gateway (``edged.enable: false``: no pods are run, so the soak does not
    need containerd, but its store still receives the pods bound to it);
  * a pod bound to every node, and ``--rate`` changes a second, each a new annotation on a random one of them.

CloudCore's and EdgeCore's RSS are sampled every ``--sample-every`` seconds. Reported: each process's RSS at the
end of the warm-up (``--warmup-minutes``, 10) and at the end, the growth between them, and the slope of a
least-squares line through the samples after the warm-up (KiB per minute); ``soak.png`` plots the samples. The
goal is no growth beyond noise after the warm-up (KubeEdge's users reported leaks: kubeedge#3527, #4326).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.dispatch import bounded_gather, create_nodes, node_name, node_pki
from benchmarks.reconnect import EdgeProcess, ask_all, start_edges
from benchmarks.support import guarded, log, log_tails, recv_within, rss_kib, slope, stop_child, table
from cloudcore.kube import Kube, KubeError
from common.loop import run
from scripts.harness.cluster import ControlPlane, create_edge_node, create_namespace
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.faultproxy import FaultProxy

NAMESPACE = "bench-soak"
IMAGE = "localhost/busybox:1.35"
GATEWAY = "soak-gateway"


@dataclass
class Resources:
    plane: ControlPlane | None = None
    mosquitto: Mosquitto | None = None
    cloudcore: CloudCoreProcess | None = None
    edgecore: EdgeCoreProcess | None = None
    edges: list[EdgeProcess] = field(default_factory=list)

    def stop(self) -> None:
        for edge in self.edges:
            with contextlib.suppress(OSError):
                edge.conn.send(("stop",))
        for edge in self.edges:
            stop_child(edge.process, edge.conn, timeout=30)
        for service in (self.edgecore, self.cloudcore):
            if service is not None:
                service.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.plane is not None:
            self.plane.down()


@dataclass
class Sample:
    minute: float
    cloudcore_kib: int
    edgecore_kib: int
    edges_kib: int


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench-soak"}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": IMAGE}]},
    }


async def bench(args: argparse.Namespace, workdir: Path, res: Resources) -> int:
    assert res.plane is not None and res.mosquitto is not None
    nodes = [node_name(i) for i in range(args.nodes)]
    pki = await asyncio.to_thread(node_pki, workdir / "pki", [*nodes, GATEWAY])
    cloudcore = res.cloudcore = CloudCoreProcess(
        workdir / "cloudcore",
        kubeconfig=res.plane.kubeconfig,
        pki=pki,
        keepalive_interval=15,
        node_limit=args.nodes + 10,
        lease_renew_interval=10,
    )
    cloudcore.start()
    kube = await Kube.connect(str(res.plane.kubeconfig))
    samples: list[Sample] = []
    changes = failed = cuts = 0
    try:
        await create_namespace(kube, NAMESPACE)
        await create_nodes(kube, nodes)
        with contextlib.suppress(KubeError):
            await create_edge_node(kube, GATEWAY)
        pods = [(f"soak-{i:04d}", node) for i, node in enumerate([*nodes, *[GATEWAY] * 5])]

        async def create(name: str, node: str) -> None:
            await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body(name, node))

        await bounded_gather([create(name, node) for name, node in pods], 16)
        await cloudcore.wait_ready(timeout=60)
        async with FaultProxy("127.0.0.1", cloudcore.port) as proxy:
            edgecore = res.edgecore = EdgeCoreProcess(
                workdir / "edgecore",
                node=GATEWAY,
                server=f"127.0.0.1:{proxy.port}",
                pki=pki,
                heartbeat=15,
                mqtt=res.mosquitto.url,
                extra={"modules": {"edged": {"enable": False}}},
            )
            edgecore.start()
            lifetime = 60 * args.minutes + 600  # the whole soak, and time to set up and report
            res.edges = start_edges(args, nodes, pki.directory, proxy.port, workdir, lifetime=lifetime)
            for edge in res.edges:
                await recv_within(edge.conn, 120)
            connected = sum(r["connected"] for r in await ask_all(res.edges, "connect", 120, timeout=150))
            await edgecore.wait_ready(timeout=60)
            log(f"{connected}/{args.nodes} hollow edges and the gateway connected through the fault proxy")
            assert edgecore.proc is not None and cloudcore.proc is not None
            edges_pids = [e.process.pid for e in res.edges if e.process.pid is not None]

            loop = asyncio.get_running_loop()
            started = loop.time()
            end = started + 60 * args.minutes
            next_cut = started + args.cut_every
            next_sample = started
            rng = random.Random(args.seed)
            k = 0
            while (now := loop.time()) < end:
                if now >= next_sample:
                    samples.append(
                        Sample(
                            (now - started) / 60,
                            rss_kib(cloudcore.proc.pid),
                            rss_kib(edgecore.proc.pid),
                            sum(rss_kib(p) for p in edges_pids),
                        )
                    )
                    s = samples[-1]
                    log(
                        f"minute {s.minute:5.1f}: cloudcore {s.cloudcore_kib / 1024:.1f} MiB, "
                        f"edgecore {s.edgecore_kib / 1024:.1f} MiB, {changes} changes, {cuts} cuts"
                    )
                    next_sample += args.sample_every
                if now >= next_cut:
                    proxy.cut()
                    cuts += 1
                    next_cut += args.cut_every
                name, _ = pods[rng.randrange(len(pods))]
                k += 1
                try:
                    await kube.request(
                        "PATCH",
                        f"/api/v1/namespaces/{NAMESPACE}/pods/{name}",
                        body={"metadata": {"annotations": {"bench-soak/change": str(k)}}},
                        content_type="application/merge-patch+json",
                    )
                    changes += 1
                except KubeError:
                    failed += 1
                await asyncio.sleep(max(0.0, started + k / args.rate - loop.time()))
            if cloudcore.process.exited() is not None or edgecore.process.exited() is not None:
                raise RuntimeError("cloudcore or edgecore exited during the soak")
            if any(not e.process.is_alive() for e in res.edges):
                raise RuntimeError("the hollow edges' process exited during the soak")
    finally:
        await kube.close()

    after = [s for s in samples if s.minute >= args.warmup_minutes] or samples[-1:]
    first, last = after[0], samples[-1]
    rows = [("fleet", f"{args.nodes} hollow edges + 1 edgecore (device-only) through the fault proxy")]
    rows.append(("load", f"{changes} changes ({failed} failed) over {args.minutes:g} min, {cuts} tunnel cuts"))
    result: dict[str, Any] = {"bench": "soak", "minutes": args.minutes, "nodes": args.nodes, "cuts": cuts}
    measured = (("cloudcore", "cloudcore_kib"), ("edgecore", "edgecore_kib"), ("hollow edges", "edges_kib"))
    for label, attribute in measured:

        def get(sample: Sample, attribute: str = attribute) -> int:
            return int(getattr(sample, attribute))

        growth = 100 * (get(last) - get(first)) / get(first)
        per_minute = slope([(s.minute, get(s)) for s in after])
        rows.append(
            (
                f"{label} RSS, MiB",
                f"{get(samples[0]) / 1024:.1f} at start, {get(first) / 1024:.1f} at minute {first.minute:.0f}, "
                f"{get(last) / 1024:.1f} at the end: {growth:+.1f} %, slope {per_minute:+.1f} KiB/min",
            )
        )
        key = label.replace(" ", "_")
        result[f"{key}_growth_pct"] = round(growth, 2)
        result[f"{key}_slope_kib_per_min"] = round(per_minute, 1)
    plot(samples, args.plot)
    print()
    print(table(rows))
    print(json.dumps(result), flush=True)
    return 0


def plot(samples: list[Sample], path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the picture

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log("matplotlib not installed: no soak.png")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    minutes = [s.minute for s in samples]
    ax.plot(minutes, [s.cloudcore_kib / 1024 for s in samples], marker="o", label="cloudcore")
    ax.plot(minutes, [s.edgecore_kib / 1024 for s in samples], marker="o", label="edgecore")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--nodes", type=int, default=200, help="hollow edges (default 200)")
    parser.add_argument("--rate", type=float, default=5.0, help="changes a second (default 5)")
    parser.add_argument("--cut-every", type=float, default=300.0, help="seconds between tunnel cuts (default 300)")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between RSS samples (default 60)")
    parser.add_argument("--warmup-minutes", type=float, default=10.0, help="growth is measured after (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path("soak.png"), help="where to write the plot (soak.png)")
    args = parser.parse_args(argv)
    args.processes = 1  # start_edges' setting: 200 idle edges fit one child
    if args.minutes <= 0 or args.nodes < 1 or args.rate <= 0 or args.cut_every <= 0:
        parser.error("--minutes, --nodes, --rate and --cut-every must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    res = Resources()

    def body() -> int:
        res.mosquitto = Mosquitto(workdir / "mosquitto")
        res.mosquitto.start()
        res.plane = ControlPlane.up(workdir / "control-plane")
        return run(bench(args, workdir, res))

    def show_logs() -> None:
        log_tails([res.cloudcore, res.edgecore])

    def teardown() -> None:
        res.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    return guarded(body, teardown=teardown, show_logs=show_logs, started=started)


if __name__ == "__main__":
    sys.exit(main())
