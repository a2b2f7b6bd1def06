"""Federated learning benchmark: Sedna's FederatedLearningJob on kubage beside centralized, local-only and Flower.

One run, everything real and on loopback: its own control plane, five containerds, the real ``cloudcore`` and
five ``edgecore`` commands (the dev harness) behind byte-counting fault proxies, and the learning image. The job
trains the lib's MLP (64-32-10, SGD lr 0.1, batch 10, one local epoch per round) on scikit-learn's digits
(shipped in its wheel: nothing is downloaded), 4 training workers on 4 edge nodes and the aggregator on a fifth,
seeds fixed. Lines:

  * centralized: the same MLP on all the training data, one epoch per "round";
  * local-only: each worker trains on its own non-IID shard alone (mean test accuracy of the four);
  * kubage FedAvg, IID and non-IID (2 label-sorted shards per worker): the job through pods, local controllers,
    the tunnel and CloudCore;
  * Flower FedAvg, IID and non-IID: the same model, split, rounds and epochs in ``flwr`` (real gRPC, its own
    venv: benchmarks/flower_env.py, benchmarks/flower_side.py), bytes measured by a proxy on its clients' links;
  * kubage and Flower over a 10 ms RTT link (the proxies delay each direction by 5 ms);
  * kubage with a 10 MB model (64-2500-1000-10, 2.67 M float32);
  * with ``--operator``: the non-IID job again in Distributed mode, its trainers a PyTorchJob of the real
    Kubeflow Training Operator (v1.8.1, built from the Go module proxy), placed by the scheduler.

Seconds per round leave out round 1 (it includes the workers' start). Bytes per round are what crossed the
four training workers' links, both ways, everything included (object sync, keepalives, status, weights);
the aggregator's own link is shown beside. Prints a table, writes ``federated.png`` (accuracy per round for
every line) next to it, and prints one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.flower_env import flower_python
from benchmarks.support import guarded, log, log_tails, stop_services, table
from cloudcore.kube import Kube
from common.loop import run
from learning import data
from learning.estimator import MLP
from scripts.harness import federated
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.containerd import Containerd
from scripts.harness.containerd import start as start_containerd
from scripts.harness.learning_image import REF as LEARNING_IMAGE
from scripts.harness.learning_image import build as build_learning_image
from scripts.harness.operator import TrainingOperator
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.edges import ready_with_cidr
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4
BIG_MODEL = "64,2500,1000,10"  # 2,673,510 parameters: 10.7 MB of float32
OPERATOR_LINE = "kubage non-IID, via PyTorchJob"


@dataclass
class Line:
    name: str
    accuracy: list[float]  # after each round
    seconds: list[float] = field(default_factory=list)  # each round's duration
    bytes_per_round: float = float("nan")  # on the training workers' links, both ways
    aggregator_bytes_per_round: float = float("nan")

    def at(self, round_: int) -> float:
        return self.accuracy[round_ - 1] if len(self.accuracy) >= round_ else float("nan")

    def rounds_to(self, target: float) -> int | None:
        return next((i + 1 for i, a in enumerate(self.accuracy) if a >= target), None)

    @property
    def seconds_per_round(self) -> float:
        later = self.seconds[1:] or self.seconds
        return float(np.mean(later)) if later else float("nan")


@dataclass
class Resources:
    workdir: Path
    plane: ControlPlane | None = None
    containerds: list[Containerd] = field(default_factory=list)
    cloudcore: CloudCoreProcess | None = None
    edges: list[EdgeCoreProcess] = field(default_factory=list)
    operator: TrainingOperator | None = None

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        stop_services([(e.node, e) for e in self.edges] + [("cloudcore", self.cloudcore)])
        for ctd in self.containerds:
            ctd.stop()
        if self.plane is not None:
            self.plane.down()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- in-process baselines ------------------------------------------------------------------------------------


def centralized(rounds: int) -> Line:
    train, test = data.digits()
    model = MLP(seed=0)
    accuracy = []
    for _ in range(rounds):
        model.train(*train, epochs=1)
        accuracy.append(model.evaluate(*test).accuracy)
    return Line("centralized (1 epoch a round)", accuracy)


def local_only(rounds: int) -> Line:
    train, test = data.digits()
    per_worker = []
    for i, shard in enumerate(data.shards(train, WORKERS, iid=False)):
        model = MLP(seed=i + 1)
        model.set_weights(MLP(seed=0).get_weights())
        curve = []
        for _ in range(rounds):
            model.train(*shard, epochs=1)
            curve.append(model.evaluate(*test).accuracy)
        per_worker.append(curve)
    return Line("local-only, non-IID (mean of 4)", [float(np.mean(col)) for col in zip(*per_worker, strict=True)])


# --- Flower --------------------------------------------------------------------------------------------------


def flower(name: str, rounds: int, *, iid: bool, rtt_ms: float = 0) -> Line:
    python = flower_python()
    argv = [
        str(python),
        str(ROOT / "benchmarks" / "flower_side.py"),
        "--rounds",
        str(rounds),
        "--workers",
        str(WORKERS),
    ]
    argv += ["--iid" if iid else "--non-iid", "--rtt-ms", f"{rtt_ms:g}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, env={"PYTHONPATH": str(ROOT)}, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"flower_side.py failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    per_round = result["rounds"]
    total = sum(r["bytes_up"] + r["bytes_down"] for r in per_round)
    return Line(
        name,
        [float(r["accuracy"]) for r in per_round],
        [float(r["seconds"]) for r in per_round],
        bytes_per_round=total / len(per_round),
    )


# --- kubage --------------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    kube: Kube
    nodes: list[str]  # the aggregator's node first
    proxies: list[FaultProxy]
    workdir: Path


async def kubage_job(
    fleet: Fleet,
    name: str,
    rounds: int,
    *,
    iid: bool,
    model_sizes: str = "64,32,10",
    distributed: dict[str, Any] | None = None,
) -> Line:
    namespace = f"bench-fl-{uuid.uuid4().hex[:6]}"
    await create_namespace(fleet.kube, namespace)
    base = f"{federated.SEDNA}/namespaces/{namespace}"
    shards, test = federated.write_shards(fleet.workdir / namespace, WORKERS, iid=iid)
    names = []
    for i, (path, node) in enumerate(zip(shards, fleet.nodes[1:], strict=True)):
        names.append(f"shard-{i}")
        await fleet.kube.request("POST", f"{base}/datasets", body=federated.dataset(names[-1], str(path), node))
    await fleet.kube.request("POST", f"{base}/datasets", body=federated.dataset("test", str(test), fleet.nodes[0]))
    model_url = str(fleet.workdir / namespace / "model" / "digits.kfl")
    await fleet.kube.request("POST", f"{base}/models", body=federated.model("digits", model_url))
    manifest = federated.job(
        "digits",
        aggregator_node=fleet.nodes[0],
        datasets=names,
        model_name="digits",
        eval_dataset="test",
        rounds=rounds,
        round_timeout_s=120,
        model_sizes=model_sizes,
        distributed=distributed,
    )
    trainer_links, aggregator_link = fleet.proxies[1:], fleet.proxies[0]
    before = sum(p.bytes_up + p.bytes_down for p in trainer_links)
    before_agg = aggregator_link.bytes_up + aggregator_link.bytes_down
    await fleet.kube.request("POST", f"{base}/federatedlearningjobs", body=manifest)
    job: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal job
        job = await fleet.kube.get(f"{base}/federatedlearningjobs/digits")
        return (job.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    await eventually(finished, timeout=1800, interval=0.5)
    status = job["status"]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"the {name} job failed: {status.get('conditions')}")
    history = status["roundHistory"]
    moved = sum(p.bytes_up + p.bytes_down for p in trainer_links) - before
    moved_agg = aggregator_link.bytes_up + aggregator_link.bytes_down - before_agg
    await fleet.kube.request("DELETE", f"/api/v1/namespaces/{namespace}")
    log(f"{name}: {len(history)} rounds, accuracy {history[-1].get('accuracy'):.3f}")
    return Line(
        name,
        [float(h["accuracy"]) for h in history],
        [float(h["seconds"]) for h in history],
        bytes_per_round=moved / len(history),
        aggregator_bytes_per_round=moved_agg / len(history),
    )


async def bench(args: argparse.Namespace, res: Resources) -> list[Line]:
    assert res.plane is not None
    kube = await Kube.connect(str(res.plane.kubeconfig))
    pki = Pki(res.workdir / "pki")
    res.cloudcore = CloudCoreProcess(res.workdir / "cloudcore", kubeconfig=res.plane.kubeconfig, pki=pki)
    res.cloudcore.start()
    await res.cloudcore.wait_ready()
    tar = await asyncio.to_thread(build_learning_image)
    for ctd in res.containerds:
        await asyncio.to_thread(ctd.import_tar, LEARNING_IMAGE, tar, 60)
    proxies = [FaultProxy("127.0.0.1", res.cloudcore.port) for _ in res.containerds]
    for proxy in proxies:
        await proxy.start()
    try:
        for i, (ctd, proxy) in enumerate(zip(res.containerds, proxies, strict=True)):
            edge = EdgeCoreProcess(
                res.workdir / f"edge-{i}",
                node=f"bench-fl-{i}",
                server=f"127.0.0.1:{proxy.port}",
                runtime_endpoint=ctd.endpoint,
                pki=pki,
            )
            res.edges.append(edge)
            edge.start()
        for edge in res.edges:
            await edge.wait_ready()
            node = edge.node
            await eventually(lambda: ready_with_cidr(kube, node), timeout=90)  # noqa: B023 - awaited here
        log("five edge nodes Ready")
        fleet = Fleet(kube, [e.node for e in res.edges], proxies, res.workdir)
        lines = [
            await kubage_job(fleet, "kubage FedAvg, IID", args.rounds, iid=True),
            await kubage_job(fleet, "kubage FedAvg, non-IID", args.rounds, iid=False),
        ]
        for proxy in proxies:
            proxy.delay(0.005)  # each way: a 10 ms round trip on every edge link
        lines.append(await kubage_job(fleet, "kubage non-IID, 10 ms RTT", args.wan_rounds, iid=False))
        for proxy in proxies:
            proxy.heal()
        lines.append(await kubage_job(fleet, "kubage, 10 MB model", args.big_rounds, iid=False, model_sizes=BIG_MODEL))
        if args.operator:
            operator = TrainingOperator(res.plane, res.workdir / "training-operator")
            await asyncio.to_thread(operator.start)
            res.operator = operator
            log("training operator ready")
            lines.append(
                await kubage_job(fleet, OPERATOR_LINE, args.rounds, iid=False, distributed={"replicas": WORKERS})
            )
        return lines
    finally:
        for proxy in proxies:
            await proxy.close()
        await kube.close()


# --- report --------------------------------------------------------------------------------------------------


def _f(value: float, spec: str = ".3f") -> str:
    return "-" if math.isnan(value) else format(value, spec)  # NaN: not measured on that line


def report(lines: list[Line], png: Path) -> dict[str, Any]:
    rows = [("line", "acc r1 / r5 / r10 / r30   rounds to 90%   s/round   KB/round (aggregator link)")]
    for line in lines:
        to90 = line.rounds_to(0.9)
        accuracy = " / ".join(_f(line.at(r)) for r in (1, 5, 10, 30))
        agg = (
            f" ({_f(line.aggregator_bytes_per_round / 1000, '.1f')})"
            if not math.isnan(line.aggregator_bytes_per_round)
            else ""
        )
        rows.append(
            (
                line.name,
                f"{accuracy:<27} {to90 or '-'!s:<15} {_f(line.seconds_per_round, '.3f'):<9} "
                f"{_f(line.bytes_per_round / 1000, '.1f')}{agg}",
            )
        )
    print(table(rows))
    by = {line.name: line for line in lines}
    ours, theirs = by["kubage FedAvg, non-IID"], by["Flower FedAvg, non-IID"]
    result = {
        "iid_accuracy": round(by["kubage FedAvg, IID"].at(30), 4),
        "noniid_accuracy": round(ours.at(30), 4),
        "flower_iid_accuracy": round(by["Flower FedAvg, IID"].at(30), 4),
        "flower_noniid_accuracy": round(theirs.at(30), 4),
        "centralized_accuracy": round(by["centralized (1 epoch a round)"].at(30), 4),
        "local_only_accuracy": round(by["local-only, non-IID (mean of 4)"].at(30), 4),
        "seconds_per_round": round(ours.seconds_per_round, 4),
        "flower_seconds_per_round": round(theirs.seconds_per_round, 4),
        "flower_seconds_ratio": round(ours.seconds_per_round / theirs.seconds_per_round, 3),
        "bytes_per_round": round(ours.bytes_per_round),
        "flower_bytes_per_round": round(theirs.bytes_per_round),
        "flower_bytes_ratio": round(ours.bytes_per_round / theirs.bytes_per_round, 3),
        "wan10ms_seconds_per_round": round(by["kubage non-IID, 10 ms RTT"].seconds_per_round, 4),
        "flower_wan10ms_seconds_per_round": round(by["Flower non-IID, 10 ms RTT"].seconds_per_round, 4),
        "model10mb_seconds_per_round": round(by["kubage, 10 MB model"].seconds_per_round, 4),
    }
    if OPERATOR_LINE in by:
        operated = by[OPERATOR_LINE]
        result["operator_accuracy"] = round(operated.at(30), 4)
        result["operator_seconds_per_round"] = round(operated.seconds_per_round, 4)
        result["operator_seconds_ratio"] = round(operated.seconds_per_round / ours.seconds_per_round, 3)
    plot(lines, png)
    print(f"plot: {png}")
    return result


def plot(lines: list[Line], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for line in lines:
        if len(line.accuracy) > 1:
            style = "--" if "Flower" in line.name else "-"
            ax.plot(range(1, len(line.accuracy) + 1), line.accuracy, style, label=line.name, linewidth=1.5)
    ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (360 digits)")
    ax.set_ylim(0, 1)
    ax.set_title("FedAvg on digits, 4 edge workers: kubage vs Flower vs centralized vs local-only")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the IID and non-IID jobs")
    parser.add_argument("--wan-rounds", type=int, default=8, help="rounds of the 10 ms RTT jobs")
    parser.add_argument("--big-rounds", type=int, default=4, help="rounds of the 10 MB model job")
    parser.add_argument(
        "--operator", action="store_true", help="also run the non-IID job through the Kubeflow Training Operator"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    res = Resources(workdir=Path(tempfile.mkdtemp(prefix="bench-federated-")))
    png = Path(__file__).resolve().parent / "federated.png"

    def body() -> int:
        res.plane, first = ControlPlane.up_beside(res.workdir / "control-plane", start_containerd)
        res.containerds = [first, *(start_containerd() for _ in range(4))]
        log(f"control plane and five containerds up after {time.perf_counter() - started:.1f}s")
        lines = [centralized(args.rounds), local_only(args.rounds)]
        lines += run(bench(args, res))
        lines += [
            flower("Flower FedAvg, IID", args.rounds, iid=True),
            flower("Flower FedAvg, non-IID", args.rounds, iid=False),
            flower("Flower non-IID, 10 ms RTT", args.wan_rounds, iid=False, rtt_ms=10),
        ]
        result = report(lines, png)
        print(json.dumps(result))
        return 0

    return guarded(body, teardown=res.stop, show_logs=lambda: log_tails([res.cloudcore, *res.edges]), started=started)


if __name__ == "__main__":
    sys.exit(main())
