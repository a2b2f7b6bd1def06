"""Pod start benchmark: pods created in the API server → Running there, beside the same sandbox and container
started by calling the node's CRI directly, in the same run.

Everything real and on loopback: its own control plane (with the controller-manager, which gives the node its
pod CIDR), a private containerd, the real ``cloudcore`` and one real ``edgecore`` (the dev harness, as the
tests run them). ``--pods`` pods (default 50) are created at ``--rate`` per second (default 10), bound to the
node, not on the host network (each gets a network namespace and an address from the bridge EdgeCore sets up),
the local busybox image running ``sleep``. A pod's start latency is from just before its POST to the watch
event in which it is Running with its container running.

The direct path does what Edged does for such a pod, on the same containerd and with the same CNI
configuration (EdgeCore wrote it): RunPodSandbox with a pod network namespace, CreateContainer, StartContainer,
timed from the first call to the last answer, as many at the same rate. What the difference holds: the API
server, CloudCore's informer and tunnel, EdgeCore's store and outbox, and the status going back up.

Prints a table (p50, p90, p99 and max for both, and their ratios) and, last, one JSON line (``ratio``: p50 ÷
p50 of the direct path; ``ratio_p99``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.edge_footprint import Resources, start_backends
from benchmarks.support import guarded, log, log_tails, table
from cloudcore.kube import Kube, KubeError
from common.loop import run
from edgecore.edged.cri import api_pb2 as pb
from scripts.harness.cluster import create_namespace
from scripts.harness.containerd import BUSYBOX_IMAGE
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.edges import ready_with_cidr

NODE = "bench-podstart"
NAMESPACE = "bench-podstart"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pod_body(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "bench-podstart"}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": COMMAND}],
        },
    }


def _running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return status.get("phase") == "Running" and bool(containers) and "running" in (containers[0].get("state") or {})


async def _until(check: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109 - a deadline of its own
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def through_the_api(kube: Kube, args: argparse.Namespace, created: list[str]) -> list[float]:
    """Start latencies of pods created at the rate, seen Running through a watch."""
    listed = await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods")
    rv = listed["metadata"]["resourceVersion"]
    names = [f"p-{i:03d}" for i in range(args.pods)]
    started: dict[str, float] = {}
    running: dict[str, float] = {}
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal rv
        while not done.is_set():
            async for event in kube.watch(f"/api/v1/namespaces/{NAMESPACE}/pods", rv, timeout_seconds=60):
                seen = time.perf_counter()
                pod = event["object"]
                rv = pod["metadata"]["resourceVersion"]
                name = pod["metadata"].get("name", "")
                if event["type"] != "BOOKMARK" and name in started and name not in running and _running(pod):
                    running[name] = seen
                    if len(running) == len(names):
                        done.set()
                        return

    watcher = asyncio.create_task(watch())
    try:
        t0 = time.perf_counter()
        for i, name in enumerate(names):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.perf_counter()))
            started[name] = time.perf_counter()
            await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body(name))
            created.append(name)
        await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, KubeError):
            await watcher
    return [running[n] - started[n] for n in names]


def _start_directly(runtime: Any, index: int, log_dir: Path) -> tuple[float, str]:
    """RunPodSandbox (pod network), CreateContainer, StartContainer: seconds, and the sandbox id."""
    name = f"direct-{index:03d}"
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uuid.uuid4().hex),
        hostname=name,
        log_directory=str(log_dir / name),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.POD))
        ),
    )
    container = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="main"),
        image=pb.ImageSpec(image=BUSYBOX_IMAGE),
        command=COMMAND,
        log_path="main.log",
    )
    t = time.perf_counter()
    sandbox_id = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
    created = runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=container, sandbox_config=sandbox), timeout=60
    )
    runtime.StartContainer(pb.StartContainerRequest(container_id=created.container_id), timeout=60)
    return time.perf_counter() - t, sandbox_id


async def directly(res: Resources, args: argparse.Namespace, sandboxes: list[str]) -> list[float]:
    assert res.containerd is not None
    log_dir = res.workdir / "direct-logs"
    latencies = [0.0] * args.pods  # in creation order
    with res.containerd.cri() as (runtime, _):

        async def one(i: int) -> None:
            took, sandbox_id = await asyncio.to_thread(_start_directly, runtime, i, log_dir)
            sandboxes.append(sandbox_id)
            latencies[i] = took

        tasks = []
        t0 = time.perf_counter()
        for i in range(args.pods):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    return latencies


def _remove_sandboxes(res: Resources, sandboxes: list[str]) -> None:
    assert res.containerd is not None
    with res.containerd.cri() as (runtime, _):
        for sandbox_id in sandboxes:
            with contextlib.suppress(Exception):
                runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
                runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)


async def bench(args: argparse.Namespace, kubeconfig: Path, res: Resources) -> tuple[list[float], list[float]]:
    assert res.containerd is not None
    pki = await asyncio.to_thread(Pki, res.workdir / "pki")
    res.cloudcore = CloudCoreProcess(res.workdir / "cloudcore", kubeconfig=kubeconfig, pki=pki)
    res.cloudcore.start()
    kube = await Kube.connect(str(kubeconfig))
    created: list[str] = []
    sandboxes: list[str] = []
    try:
        await create_namespace(kube, NAMESPACE)
        await res.cloudcore.wait_ready(30)
        res.edgecore = EdgeCoreProcess(
            res.workdir / "edgecore",
            node=NODE,
            server=f"127.0.0.1:{res.cloudcore.port}",
            runtime_endpoint=res.containerd.endpoint,
            pki=pki,
        )
        res.edgecore.start()
        await res.edgecore.wait_ready(30)
        await _until(lambda: ready_with_cidr(kube, NODE), 60, f"node {NODE} Ready with a pod CIDR")
        # one pod first: the bridge and its CNI configuration exist before either path is timed
        await kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=pod_body("warm-up"))
        created.append("warm-up")

        async def warm() -> bool:
            return _running(await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods/warm-up"))

        await _until(warm, 60, "the warm-up pod Running")
        log(f"node {NODE} Ready, its pod network up")
        api = await through_the_api(kube, args, created)
        log(f"{args.pods} pods Running through the API server")
        direct = await directly(res, args, sandboxes)
        log(f"{args.pods} sandboxes and containers started through CRI directly")
        return api, direct
    finally:
        await asyncio.to_thread(_remove_sandboxes, res, sandboxes)
        for name in created:
            with contextlib.suppress(KubeError):
                await kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
        await kube.close()


def report(args: argparse.Namespace, api: list[float], direct: list[float]) -> dict[str, Any]:
    def ms(values: list[float], q: float) -> str:
        return f"{1000 * percentile(values, q):.0f}"

    rows = [("", "p50 ms   p90 ms   p99 ms   max ms")]
    for name, values in (("created in the API server → Running there", api), ("CRI directly on the node", direct)):
        rows.append((name, f"{ms(values, 0.5):<8} {ms(values, 0.9):<8} {ms(values, 0.99):<8} {ms(values, 1.0)}"))
    ratio = percentile(api, 0.5) / percentile(direct, 0.5)
    ratio_p99 = percentile(api, 0.99) / percentile(direct, 0.99)
    rows += [
        ("ratio p50 / p99 (API ÷ direct)", f"{ratio:.2f} / {ratio_p99:.2f}"),
        ("pods, rate", f"{args.pods} at {args.rate:g}/s, not host-network, {BUSYBOX_IMAGE}"),
    ]
    print(table(rows))
    return {
        "bench": "pod_start",
        "ratio": round(ratio, 3),
        "ratio_p99": round(ratio_p99, 3),
        "api_p50_ms": round(1000 * percentile(api, 0.5), 1),
        "api_p99_ms": round(1000 * percentile(api, 0.99), 1),
        "direct_p50_ms": round(1000 * percentile(direct, 0.5), 1),
        "direct_p99_ms": round(1000 * percentile(direct, 0.99), 1),
        "api_mean_ms": round(1000 * statistics.mean(api), 1),
        # in creation order: a latency that grows along the run is pods queueing somewhere, a flat one is a cost
        "api_first10_mean_ms": round(1000 * statistics.mean(api[:10]), 1),
        "api_last10_mean_ms": round(1000 * statistics.mean(api[-10:]), 1),
        "direct_first10_mean_ms": round(1000 * statistics.mean(direct[:10]), 1),
        "direct_last10_mean_ms": round(1000 * statistics.mean(direct[-10:]), 1),
        "pods": args.pods,
        "rate": args.rate,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0, help="pods created per second")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for all pods of one path to start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    res = Resources(workdir=Path(tempfile.mkdtemp(prefix="bench-podstart-")))

    def body() -> int:
        kubeconfig = start_backends(res)
        api, direct = run(bench(args, kubeconfig, res))
        print(json.dumps(report(args, api, direct)))
        return 0

    return guarded(body, teardown=res.stop, show_logs=lambda: log_tails([res.cloudcore, res.edgecore]), started=started)


if __name__ == "__main__":
    sys.exit(main())
