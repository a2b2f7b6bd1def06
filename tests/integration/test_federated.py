"""Federated learning across real edge nodes: Sedna's FederatedLearningJob on our stack.

Four EdgeCores (each with its own containerd) join one CloudCore through fault proxies; the global manager
creates the aggregator's and the trainers' pods, whose init containers wait for the data loader to bring
each node its Dataset; the weights travel lib → local controller → tunnel → CloudCore → tunnel → local
controller. Every job trains the same MLP on scikit-learn's digits, split non-IID (2 label-sorted shards per
worker, 4-6 classes each), and is evaluated on the 360 test digits by the aggregator.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudcore.kube import MERGE_PATCH, Kube
from scripts.harness import federated
from scripts.harness.cluster import ControlPlane, create_namespace
from scripts.harness.containerd import Containerd
from scripts.harness.containerd import start as start_containerd
from scripts.harness.learning_image import REF as LEARNING_IMAGE
from scripts.harness.learning_image import build as build_learning_image
from scripts.harness.operator import OperatorError, TrainingOperator
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess
from tests.edges import edge_node
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually

pytestmark = pytest.mark.kube

SEDNA = federated.SEDNA
WAIT = "sedna-data-wait"


@pytest.fixture(scope="module")
def runtimes(containerd: Containerd) -> Iterator[list[Containerd]]:
    """Four container runtimes, one per node, each with the learning image imported."""
    tar = build_learning_image()
    extra: list[Containerd] = []
    try:
        for _ in range(3):
            extra.append(start_containerd())
        for ctd in [containerd, *extra]:
            ctd.import_tar(LEARNING_IMAGE, tar, timeout=60)
        yield [containerd, *extra]
    finally:
        for ctd in extra:
            ctd.stop()


@dataclass
class Site:
    edge: EdgeCoreProcess
    proxy: FaultProxy
    runtime: Containerd


@dataclass
class Fleet:
    kube: Kube
    cloud: CloudCoreProcess
    sites: list[Site]
    namespace: str
    workdir: Path

    @property
    def nodes(self) -> list[str]:
        return [s.edge.node for s in self.sites]

    async def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        path = f"{SEDNA}/namespaces/{self.namespace}/{plural}"
        created: dict[str, Any] = await self.kube.request("POST", path, body=obj)
        return created

    async def get_job(self, name: str) -> dict[str, Any]:
        job: dict[str, Any] = await self.kube.get(f"{SEDNA}/namespaces/{self.namespace}/federatedlearningjobs/{name}")
        return job

    async def pods(self, selector: str) -> list[dict[str, Any]]:
        listed = await self.kube.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods", query=[("labelSelector", selector)]
        )
        return list(listed.get("items") or [])

    async def start_job(
        self, name: str, *, iid: bool = False, edit: Callable[[dict[str, Any]], None] | None = None, **job: Any
    ) -> None:
        """Datasets (a shard per node, the test set on the aggregator's node), a Model, and the job (``edit``
        changes its manifest first)."""
        shards, test = federated.write_shards(self.workdir / name, len(self.sites), iid=iid)
        names = []
        for i, (path, node) in enumerate(zip(shards, self.nodes, strict=True)):
            names.append(f"{name}-shard-{i}")
            await self.create("datasets", federated.dataset(names[-1], str(path), node))
        await self.create("datasets", federated.dataset(f"{name}-test", str(test), self.nodes[0]))
        await self.create("models", federated.model(f"{name}-model", str(self.workdir / name / "model" / "digits.kfl")))
        manifest = federated.job(
            name,
            aggregator_node=self.nodes[0],
            datasets=job.pop("datasets", names),
            model_name=f"{name}-model",
            eval_dataset=f"{name}-test",
            **job,
        )
        if edit is not None:
            edit(manifest)
        await self.create("federatedlearningjobs", manifest)

    async def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        found: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal found
            found = await self.get_job(name)
            return (found.get("status") or {}).get("phase") in phases

        try:
            await eventually(reached, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(
                f"job {name} not {phases} within {timeout}s: {found.get('status')}\n{self.logs()}"
            ) from None
        return found

    async def wait_round(self, name: str, round_: int, timeout: float = 120) -> None:  # noqa: ASYNC109
        async def reached() -> bool:
            return int(((await self.get_job(name)).get("status") or {}).get("currentRound") or 0) >= round_

        await eventually(reached, timeout=timeout, interval=0.2)

    def logs(self) -> str:
        return "\n".join(
            [f"--- cloudcore\n{self.cloud.tail(30)}", *(f"--- {s.edge.node}\n{s.edge.tail(15)}" for s in self.sites)]
        )

    def container_log(self, pod: dict[str, Any], container: str, attempt: int) -> str:
        node = pod["spec"]["nodeName"]
        site = next(s for s in self.sites if s.edge.node == node)
        m = pod["metadata"]
        return site.edge.pod_log(m["namespace"], m["name"], m["uid"], container, attempt)


@contextlib.asynccontextmanager
async def fleet_of(
    kube: Kube, clouds: list[CloudCoreProcess], runtimes: list[Containerd], pki: Pki, workdir: Path
) -> AsyncIterator[Fleet]:
    """Four nodes, node i connected to ``clouds[i * len(clouds) // 4]`` (the first half to the first replica)."""
    namespace = f"fl-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    async with contextlib.AsyncExitStack() as stack:
        sites = []
        for i, runtime in enumerate(runtimes):
            cloud = clouds[i * len(clouds) // len(runtimes)]
            proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", cloud.port))
            edge = await stack.enter_async_context(edge_node(kube, proxy, runtime, pki, workdir / f"edge-{i}"))
            sites.append(Site(edge, proxy, runtime))
        yield Fleet(kube, clouds[0], sites, namespace, workdir)
        with contextlib.suppress(Exception):  # the pods go with the namespace; stop them before the nodes go
            await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")
            await eventually(lambda: _no_pods(kube, namespace), timeout=60, interval=0.5)


@pytest.fixture
async def fleet(
    kube: Kube, cloud: CloudCoreProcess, runtimes: list[Containerd], pki: Pki, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet_of(kube, [cloud], runtimes, pki, tmp_path) as found:
        yield found


async def _no_pods(kube: Kube, namespace: str) -> bool:
    listed = await kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    return not listed.get("items")


def _history(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list((job.get("status") or {}).get("roundHistory") or [])


async def test_a_non_iid_job_on_four_edge_nodes_reaches_90_percent_and_deleting_it_removes_its_pods(
    fleet: Fleet,
) -> None:
    await fleet.start_job("digits", rounds=30)
    job = await fleet.wait_phase("digits", ("Succeeded", "Failed"), timeout=300)
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["currentRound"] == 30
    history = _history(job)
    assert len(history) == 30
    assert history[-1]["accuracy"] >= 0.90, history[-1]  # local-only training on one shard reaches about 0.41
    assert all(h["workers"] == 4 for h in history)
    assert {c["type"] for c in status["conditions"]} >= {"Training", "Complete"}
    model = await fleet.kube.get(f"{SEDNA}/namespaces/{fleet.namespace}/models/digits-model")
    metrics = {m["key"]: float(m["value"]) for m in model["status"]["metrics"]}
    assert metrics["accuracy"] >= 0.90
    assert (fleet.workdir / "digits" / "model" / "digits.kfl").stat().st_size > 4 * 2410
    pods = await fleet.pods("sedna.io/job-name=digits")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted([*fleet.nodes, fleet.nodes[0]])
    datasets = await fleet.kube.get(f"{SEDNA}/namespaces/{fleet.namespace}/datasets/digits-shard-1")
    assert datasets["status"]["phase"] == "Ready"
    assert datasets["status"]["numberOfSamples"] > 300

    await fleet.kube.request("DELETE", f"{SEDNA}/namespaces/{fleet.namespace}/federatedlearningjobs/digits")
    await eventually(lambda: _gone(fleet), timeout=60, interval=0.5)


async def _gone(fleet: Fleet) -> bool:
    return not await fleet.pods("sedna.io/job-name=digits")


async def test_a_quorum_that_can_never_be_met_fails_the_job_instead_of_hanging(fleet: Fleet) -> None:
    await fleet.create("datasets", federated.dataset("missing", "/nonexistent/shard.csv", fleet.nodes[3]))
    names = ["q-shard-0", "q-shard-1", "q-shard-2", "missing"]
    await fleet.start_job("q", rounds=5, min_workers=4, round_timeout_s=3, retries=1, datasets=names)
    job = await fleet.wait_phase("q", ("Succeeded", "Failed"), timeout=180)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert job["status"]["phase"] == "Failed"
    assert failed["reason"] == "QuorumNotReached"
    assert "3 of the 4 updates" in failed["message"]
    missing = await fleet.kube.get(f"{SEDNA}/namespaces/{fleet.namespace}/datasets/missing")
    assert missing["status"]["phase"] == "Failed"
    assert "/nonexistent/shard.csv" in missing["status"]["message"]


def _container_id(pod: dict[str, Any], container: str) -> str:
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
    return str(status["containerID"]).removeprefix("containerd://")


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or [])


async def _kill(fleet: Fleet, pod_name: str, container: str) -> dict[str, Any]:
    """SIGKILL the container's process, as the OOM killer or a crash would; its pod restarts it (OnFailure)."""
    pod = await fleet.kube.get(f"/api/v1/namespaces/{fleet.namespace}/pods/{pod_name}")
    site = next(s for s in fleet.sites if s.edge.node == pod["spec"]["nodeName"])
    await asyncio.to_thread(site.runtime.ctr, "tasks", "kill", "-s", "SIGKILL", _container_id(pod, container))
    return dict(pod)


async def test_a_killed_trainer_rejoins_and_a_killed_aggregator_resumes_from_its_checkpoint(fleet: Fleet) -> None:
    # 50 local epochs a round: rounds of a few tenths of a second, slow enough to kill things in the middle of
    await fleet.start_job("faults", rounds=30, min_workers=3, round_timeout_s=5, epochs=50)
    await fleet.wait_round("faults", 3)
    await _kill(fleet, "faults-trainer-1", "trainer")  # mid-round: the quorum of 3 carries the rounds on
    await fleet.wait_round("faults", 8)
    await _kill(fleet, "faults-aggregator", "aggregator")
    job = await fleet.wait_phase("faults", ("Succeeded", "Failed"), timeout=300)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    history = _history(job)
    assert [h["round"] for h in history] == list(range(1, 31))  # resumed where it was: no round lost or repeated
    assert history[-1]["workers"] == 4  # the restarted trainer is back in
    trainer = await fleet.kube.get(f"/api/v1/namespaces/{fleet.namespace}/pods/faults-trainer-1")
    aggregator = await fleet.kube.get(f"/api/v1/namespaces/{fleet.namespace}/pods/faults-aggregator")
    assert _restarts(trainer) >= 1
    assert _restarts(aggregator) >= 1
    resumed = fleet.container_log(aggregator, "aggregator", 1)
    assert "resumed from the checkpoint at round" in resumed, resumed[-2000:]
    assert int(resumed.split("resumed from the checkpoint at round ")[1].split()[0]) >= 8


async def test_an_edge_cut_for_two_rounds_and_cloudcore_killed_meanwhile_do_not_stop_the_job(fleet: Fleet) -> None:
    # The deadline covers a CloudCore restart (with the edges' reconnect backoff and the workers' resend) three
    # times over; 30 rounds leave rounds to rejoin in after the cut heals.
    await fleet.start_job("outage", rounds=30, min_workers=3, round_timeout_s=8, epochs=50)  # rounds of tenths of a s
    await fleet.wait_round("outage", 2)
    cut = fleet.sites[2]  # a trainer's node, not the aggregator's
    cut.proxy.refuse()
    cut.proxy.cut()
    # A round closed on the quorum of 3, at its deadline. (Rounds take tenths of a second and the status
    # follows them, so the round the status shows at the cut may have had all four already.)
    await eventually(lambda: _last_round_had(fleet, "outage", 3), timeout=60, interval=0.2)
    fleet.cloud.kill()  # SIGKILL mid-job: nothing of the job was only in its memory
    await asyncio.sleep(2)
    fleet.cloud.start()
    await fleet.cloud.wait_ready()
    at_restart = int((await fleet.get_job("outage"))["status"]["currentRound"])
    await eventually(lambda: _last_round_had(fleet, "outage", 3, after=at_restart), timeout=90, interval=0.2)
    cut.proxy.refuse(False)
    cut.proxy.heal()
    job = await fleet.wait_phase("outage", ("Succeeded", "Failed"), timeout=400)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    history = _history(job)
    assert [h["round"] for h in history] == list(range(1, 31))
    assert min(h["workers"] for h in history) == 3  # rounds went on without the cut node
    assert history[-1]["workers"] == 4  # and it rejoined


async def test_a_trainer_and_the_aggregator_on_different_cloudcore_replicas(
    kube: Kube, control_plane: ControlPlane, runtimes: list[Containerd], pki: Pki, tmp_path: Path
) -> None:
    first = CloudCoreProcess(tmp_path / "cc1", kubeconfig=control_plane.kubeconfig, pki=pki)
    second = CloudCoreProcess(tmp_path / "cc2", kubeconfig=control_plane.kubeconfig, pki=pki)
    first.start()
    second.start()
    try:
        await first.wait_ready()
        await second.wait_ready()
        async with fleet_of(kube, [first, second], runtimes, pki, tmp_path) as fleet:
            # The aggregator on node 0 (first replica), trainers on both; a model of 90 KB, above common.fl's
            # INLINE_MAX, so its blobs wait on their nodes and travel over streams, through the other replica.
            await fleet.start_job("ha", rounds=8, model_sizes="64,300,10")
            job = await fleet.wait_phase("ha", ("Succeeded", "Failed"), timeout=300)
            assert job["status"]["phase"] == "Succeeded", job["status"]
            assert all(h["workers"] == 4 for h in _history(job))
            forwarded = sum(_counter(c.metrics(), "kubage_cloudstream_forwarded_total") for c in (first, second))
            assert forwarded > 0  # weights for a node held by the other replica went through it
    finally:
        first.stop()
        second.stop()


def _counter(metrics: str, name: str) -> float:
    return next((float(x.split()[1]) for x in metrics.splitlines() if x.startswith(name + " ")), 0.0)


# --- Distributed: the trainers as a PyTorchJob of the real Kubeflow Training Operator ------------------------


@pytest.fixture(scope="module")
def training_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainingOperator]:
    """The Training Operator v1.8.1 (built from the Go module proxy), its PyTorchJob CRD installed."""
    operator = TrainingOperator(control_plane, tmp_path_factory.mktemp("training-operator"))
    try:
        operator.start()
    except OperatorError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield operator
    finally:
        operator.stop()


async def _pytorchjob(fleet: Fleet, name: str) -> dict[str, Any]:
    found: dict[str, Any] = await fleet.kube.get(
        f"/apis/kubeflow.org/v1/namespaces/{fleet.namespace}/pytorchjobs/{name}"
    )
    return found


async def _last_round_had(fleet: Fleet, name: str, workers: int, after: int = 0) -> bool:
    history = _history(await fleet.get_job(name))
    return bool(history) and history[-1]["round"] > after and history[-1]["workers"] == workers


async def test_a_distributed_job_trains_through_a_pytorchjob_whose_killed_worker_is_restarted_and_rejoins(
    fleet: Fleet, training_operator: TrainingOperator
) -> None:
    await fleet.start_job("dist", rounds=30, epochs=20, round_timeout_s=10, distributed={"replicas": 4})
    await fleet.wait_round("dist", 3)
    ptj = await _pytorchjob(fleet, "dist")
    owner = ptj["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("FederatedLearningJob", "dist")
    assert ptj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    workers = await fleet.pods("training.kubeflow.org/job-name=dist")
    assert sorted(p["metadata"]["name"] for p in workers) == [f"dist-worker-{i}" for i in range(4)]
    assert sorted(p["spec"]["nodeName"] for p in workers) == sorted(fleet.nodes)  # the scheduler: one per data node
    await _kill(fleet, "dist-worker-1", "pytorch")
    job = await fleet.wait_phase("dist", ("Succeeded", "Failed"), timeout=300)
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    history = _history(job)
    assert [h["round"] for h in history] == list(range(1, 31))
    assert history[-1]["accuracy"] >= 0.90, history[-1]
    assert history[-1]["workers"] == 4  # the killed worker came back in
    restarted = await fleet.kube.get(f"/api/v1/namespaces/{fleet.namespace}/pods/dist-worker-1")
    assert _restarts(restarted) >= 1
    placed = {w["name"]: w for w in status["trainingJob"]["workers"]}
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in workers}
    for name, worker in placed.items():  # each trained on the Dataset of the node it was scheduled to
        assert worker["node"] == nodes[name]
        index = fleet.nodes.index(worker["node"])
        assert worker["dataset"] == f"dist-shard-{index}"
    waited = fleet.container_log(next(p for p in workers if p["metadata"]["name"] == "dist-worker-0"), WAIT, 0)
    assert f"dataset {placed['dist-worker-0']['dataset']} ready" in waited, waited[-2000:]
    assert status["trainingJob"]["kind"] == "PyTorchJob"

    async def operator_says_succeeded() -> bool:  # the workers exit once they have the final model
        return ((await fleet.get_job("dist"))["status"].get("trainingJob") or {}).get("phase") == "Succeeded"

    await eventually(operator_says_succeeded, timeout=60, interval=0.5)


class HeldData:
    """An http:// Dataset source that sends half its bytes, then holds the rest until ``release()``: a shard
    still on its way to its node."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.released = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(held.body)))
                self.send_header("ETag", '"held"')
                self.end_headers()

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                self._head()
                half = len(held.body) // 2
                self.wfile.write(held.body[:half])
                self.wfile.flush()
                held.released.wait(50)  # below the loader's 60 s read timeout
                self.wfile.write(held.body[half:])

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/held.csv"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


async def _cordon(fleet: Fleet, node: str, unschedulable: bool) -> None:
    await fleet.kube.request(
        "PATCH", f"/api/v1/nodes/{node}", body={"spec": {"unschedulable": unschedulable}}, content_type=MERGE_PATCH
    )


async def _scale(fleet: Fleet, name: str, replicas: int) -> None:
    path = f"{SEDNA}/namespaces/{fleet.namespace}/federatedlearningjobs/{name}"
    body = {"spec": {"trainingWorkers": {"replicas": replicas}}}
    await fleet.kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)


async def test_an_elastic_job_takes_a_worker_added_once_its_shard_is_complete_and_goes_on_when_one_is_removed(
    fleet: Fleet, training_operator: TrainingOperator
) -> None:
    shards, _ = federated.write_shards(fleet.workdir / "held", len(fleet.sites), iid=False)
    held = HeldData(shards[3].read_bytes())
    try:
        last = fleet.nodes[3]
        await _cordon(fleet, last, True)  # the first three workers land on the other nodes
        await fleet.create("datasets", federated.dataset("el-held", held.url, last))
        names = ["el-shard-0", "el-shard-1", "el-shard-2", "el-held"]
        elastic = {"replicas": 3, "minReplicas": 2, "maxReplicas": 4}
        await fleet.start_job("el", rounds=400, epochs=10, round_timeout_s=10, datasets=names, distributed=elastic)
        # minReplicas is 2, so the first rounds may close with two workers while the third is still starting
        await eventually(lambda: _last_round_had(fleet, "el", 3), timeout=120, interval=0.3)

        await _cordon(fleet, last, False)
        await _scale(fleet, "el", 4)  # a worker added: it lands on the last node, whose shard is still coming

        async def held_in_data_wait() -> bool:
            pod = await fleet.kube.get_or_none(f"/api/v1/namespaces/{fleet.namespace}/pods/el-worker-3")
            statuses = ((pod or {}).get("status") or {}).get("initContainerStatuses") or []
            return bool(pod) and pod["spec"].get("nodeName") == last and any("running" in s["state"] for s in statuses)

        await eventually(held_in_data_wait, timeout=60, interval=0.5)
        at_hold = int((await fleet.get_job("el"))["status"]["currentRound"])
        # rounds go on with the three while the fourth waits for data
        await eventually(lambda: _last_round_had(fleet, "el", 3, after=at_hold + 2), timeout=90, interval=0.3)
        pod = await fleet.kube.get(f"/api/v1/namespaces/{fleet.namespace}/pods/el-worker-3")
        assert pod["status"]["phase"] == "Pending"  # held by its init container
        dataset = await fleet.kube.get(f"{SEDNA}/namespaces/{fleet.namespace}/datasets/el-held")
        assert dataset["status"]["phase"] == "Loading"

        held.release()
        await eventually(lambda: _last_round_had(fleet, "el", 4), timeout=90, interval=0.3)
        ptj = await _pytorchjob(fleet, "el")
        assert ptj["spec"]["elasticPolicy"]["minReplicas"] == 2
        assert ptj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4

        await _scale(fleet, "el", 3)  # a worker removed: the operator deletes the highest index
        at_removal = int((await fleet.get_job("el"))["status"]["currentRound"])
        await eventually(lambda: _last_round_had(fleet, "el", 3, after=at_removal), timeout=90, interval=0.3)
        job = await fleet.wait_phase("el", ("Succeeded", "Failed"), timeout=400)
        assert job["status"]["phase"] == "Succeeded", job["status"]
        assert _history(job)[-1]["workers"] == 3
    finally:
        held.close()
        with contextlib.suppress(Exception):
            await _cordon(fleet, fleet.nodes[3], False)


async def test_a_distributed_job_whose_workers_keep_crashing_fails_at_the_operators_backoff_limit(
    fleet: Fleet, training_operator: TrainingOperator
) -> None:
    def crashing(manifest: dict[str, Any]) -> None:
        container = manifest["spec"]["trainingWorkers"]["template"]["spec"]["containers"][0]
        container["command"] = ["python3", "-c", "raise SystemExit('the trainer cannot start')"]

    distributed = {"replicas": 2, "backoffLimit": 1}
    names = ["crash-shard-0", "crash-shard-1"]
    await fleet.start_job("crash", rounds=5, datasets=names, distributed=distributed, edit=crashing)
    job = await fleet.wait_phase("crash", ("Succeeded", "Failed"), timeout=180)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TrainingJobFailed"
    assert "PyTorchJob" in failed["message"] and "backoff" in failed["message"].lower(), failed

    async def aggregator_stopped() -> bool:  # it would wait for updates that never come
        pods = await fleet.pods("sedna.io/job-name=crash,sedna.io/worker-type=aggregate")
        return all(
            p["metadata"].get("deletionTimestamp") or p["status"]["phase"] not in ("Running", "Pending") for p in pods
        )

    await eventually(aggregator_stopped, timeout=60, interval=0.5)
