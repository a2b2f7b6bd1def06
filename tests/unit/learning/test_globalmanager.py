"""The global manager without a cluster: the pods it builds, the status it writes, what nodes may report."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from cloudcore.edgecontroller.upstream import Refused
from cloudcore.globalmanager import GlobalManager
from cloudcore.globalmanager.pods import JobError, Settings, build_pods
from cloudcore.globalmanager.status import job_status
from common import fl, upstream

NOW = "2026-12-02T00:00:00Z"


def _job(**spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "img", "env": [{"name": "EPOCHS", "value": "2"}]}
    return {
        "metadata": {"name": "fl", "namespace": "ns", "uid": "job-uid"},
        "spec": {
            "aggregationWorker": {
                "model": {"name": "m"},
                "template": {"spec": {"nodeName": "agg", "containers": [container]}},
            },
            "trainingWorkers": [
                {"dataset": {"name": f"d{i}"}, "template": {"spec": {"containers": [container]}}} for i in range(2)
            ],
            **spec,
        },
    }


DATASETS = {
    f"d{i}": {"metadata": {"name": f"d{i}"}, "spec": {"url": f"/data/shard-{i}.csv", "nodeName": f"edge-{i}"}}
    for i in range(2)
}
MODELS = {"m": {"metadata": {"name": "m"}, "spec": {"url": "/models/fl/model.kfl"}}}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_pods_are_owned_by_the_job_and_trainers_run_where_their_data_is() -> None:
    agg, *trainers = build_pods(_job(minTrainingWorkers=1, roundTimeoutSeconds=5), DATASETS, MODELS)
    assert [p["metadata"]["name"] for p in (agg, *trainers)] == ["fl-aggregator", "fl-trainer-0", "fl-trainer-1"]
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == "job-uid" for p in (agg, *trainers))
    assert [t["spec"]["nodeName"] for t in trainers] == ["edge-0", "edge-1"]
    assert agg["spec"]["nodeName"] == "agg"
    assert all(p["spec"]["hostNetwork"] and p["spec"]["restartPolicy"] == "OnFailure" for p in (agg, *trainers))
    env = _env(trainers[1]["spec"]["containers"][0])
    assert env["TRAIN_DATASET_URL"] == "/data/shard-1.csv"
    assert env["LC_SERVER"] == "http://$(HOST_IP):9100"
    assert env["WORKER_NAME"] == "fl-trainer-1"
    assert env["EPOCHS"] == "2"  # the template's own env stays, after ours
    wait = trainers[0]["spec"]["initContainers"][0]
    assert wait["name"] == "sedna-data-wait" and _env(wait)["DATASET_NAME"] == "d0"
    agg_env = _env(agg["spec"]["containers"][0])
    assert (agg_env["MIN_TRAINING_WORKERS"], agg_env["ROUND_TIMEOUT_SECONDS"], agg_env["PARTICIPANTS_COUNT"]) == (
        "1",
        "5",
        "2",
    )
    assert agg_env["MODEL_URL"] == "/model/model.kfl"
    assert agg_env["CHECKPOINT_DIR"] == "/model/.checkpoint-job-uid"  # a new job of the same name starts afresh
    assert {"name": "sedna-model", "hostPath": {"path": "/models/fl", "type": "DirectoryOrCreate"}} in agg["spec"][
        "volumes"
    ]


@pytest.mark.parametrize(
    ("job", "datasets", "message"),
    [
        (_job(minTrainingWorkers=3), DATASETS, "minTrainingWorkers must be 1 to 2"),
        (_job(aggregation={"algorithm": "FedMagic"}), DATASETS, "must be FedAvg or FedProx"),
        (_job(), {"d0": DATASETS["d0"]}, r"trainingWorkers\[1\].dataset: Dataset 'd1' does not exist"),
        (_job(stopCondition={"rounds": 0}), DATASETS, "rounds must be at least 1"),
    ],
)
def test_a_job_that_cannot_run_is_refused_naming_the_field(job: dict[str, Any], datasets: Any, message: str) -> None:
    with pytest.raises(JobError, match=message):
        build_pods(job, datasets, MODELS)


def test_settings_default_to_every_worker_and_30_rounds() -> None:
    assert Settings.of(_job()) == Settings(rounds=30, min_training_workers=2, parameters={}, participants=2)


def _pod(name: str, kind: str, phase: str, terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"running": {}}
    return {
        "metadata": {"name": name, "labels": {"sedna.io/worker-type": kind}},
        "status": {"phase": phase, "containerStatuses": [{"name": "c", "state": state}]},
    }


def test_the_phase_follows_the_pods_the_reports_and_the_aggregators_outcome() -> None:
    job = _job()
    assert job_status(job, [], None, now=NOW)["phase"] == "Pending"
    running = [_pod("fl-aggregator", "aggregate", "Running"), _pod("fl-trainer-0", "train", "Running")]
    report = {
        "status": "running",
        "ownerInfo": {"currentRound": 3, "rounds": 10, "history": [{"round": 3, "accuracy": 0.5}]},
    }
    status = job_status(job, running, report, now=NOW)
    assert (status["phase"], status["currentRound"], status["progressPercentage"]) == ("Running", 3, 30)
    assert status["metrics"] == [{"name": "accuracy", "value": "0.5000"}]
    outcome = {"phase": "Failed", "reason": "QuorumNotReached", "message": "round 4 got 1 of 2", "round": 3}
    done = [_pod("fl-aggregator", "aggregate", "Succeeded", {"exitCode": 0, "message": json.dumps(outcome)})]
    failed = job_status({**job, "status": status}, done, report, now=NOW)
    assert failed["phase"] == "Failed"
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert (condition["reason"], condition["message"]) == ("QuorumNotReached", "round 4 got 1 of 2")
    # final: nothing moves it any more
    assert job_status({**job, "status": failed}, running, report, now=NOW)["phase"] == "Failed"


class _NoKube:
    async def request(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - must not be called
        raise AssertionError("no API call expected")


def _manager(request: Any = None, send: Any = None) -> GlobalManager:
    manager = GlobalManager(_NoKube(), request, send)  # type: ignore[arg-type]
    manager.on_job("ADDED", _job(), None)
    for dataset in DATASETS.values():
        manager.on_dataset("ADDED", {**dataset, "metadata": {**dataset["metadata"], "namespace": "ns"}}, None)
    owner = [{"kind": "FederatedLearningJob", "uid": "job-uid"}]
    for pod in build_pods(_job(), DATASETS, MODELS):
        pod["metadata"]["ownerReferences"] = owner
        manager.on_pod("ADDED", pod, None)
    return manager


async def test_a_node_may_report_only_for_the_workers_and_datasets_it_holds() -> None:
    manager = _manager()
    update = upstream.FlTransfer("ns", "fl", "update", "fl-trainer-1", 0, "t", 1, "a" * 64)
    with pytest.raises(Refused, match="node edge-0 runs no train worker 'fl-trainer-1'"):
        await manager.on_upstream("edge-0", update)  # type: ignore[arg-type]
    model = upstream.FlTransfer("ns", "fl", "model", "aggregator", 1, "t", 1, "a" * 64)
    with pytest.raises(Refused, match="runs no aggregation worker"):
        await manager.on_upstream("edge-1", model)  # type: ignore[arg-type]
    report = upstream.WorkerReport("ns", "fl", "fl-aggregator", "aggregate", "completed", {})
    with pytest.raises(Refused, match="node edge-0 runs no aggregate worker"):
        await manager.on_upstream("edge-0", report)  # type: ignore[arg-type]
    dataset = upstream.DatasetStatus("ns", "d1", {"phase": "Ready"})
    with pytest.raises(Refused, match="Dataset ns/d1 is not bound to node edge-0"):
        await manager.on_upstream("edge-0", dataset)  # type: ignore[arg-type]
    other_job = upstream.FlTransfer("ns", "someone-else", "join", "fl-trainer-0", 0, "", 0, "")
    with pytest.raises(Refused):
        await manager.on_upstream("edge-0", other_job)  # type: ignore[arg-type]
    assert manager.reports == {}
    await manager.on_upstream("agg", report)  # type: ignore[arg-type]
    assert manager.reports[("ns", "fl")]["status"] == "completed"


async def test_pods_listed_before_their_job_are_not_forgotten() -> None:
    """After a restart the pod cache may fill before the job cache: the pods must still count once it does."""
    manager = GlobalManager(_NoKube(), None)  # type: ignore[arg-type]
    owner = [{"kind": "FederatedLearningJob", "uid": "job-uid"}]
    for pod in build_pods(_job(), DATASETS, MODELS):
        pod["metadata"]["ownerReferences"] = owner
        manager.on_pod("ADDED", pod, None)
    await manager._reconcile(("ns", "fl"))  # no job yet: nothing to do, nothing forgotten
    report = upstream.WorkerReport("ns", "fl", "fl-trainer-1", "train", "running", {})
    await manager.on_upstream("edge-1", report)  # type: ignore[arg-type]


async def test_an_update_carried_once_is_carried_again_when_the_aggregator_offers_its_round_again() -> None:
    """A restarted aggregator has lost what its inbox held: the model it offers again (from its checkpoint)
    must let the workers' resent updates through once more, or the round never reaches its quorum."""
    sent: list[tuple[str, fl.Delivery]] = []

    async def send(node: str, message: Any) -> bool:
        sent.append((node, fl.parse_delivery(message)))
        return True

    async def no_streams(*args: Any) -> Any:  # pragma: no cover - every blob here travels inline
        raise AssertionError("no stream expected")

    manager = _manager(no_streams, send)

    async def transfer(node: str, kind: str, worker: str, round_: int, blob: bytes) -> None:
        sha = hashlib.sha256(blob).hexdigest()
        request = upstream.FlTransfer("ns", "fl", kind, worker, round_, "", len(blob), sha, blob)
        await manager.on_upstream(node, request)  # type: ignore[arg-type]
        await asyncio.gather(*manager._tasks)

    def updates_to_aggregator() -> int:
        return sum(1 for node, d in sent if node == "agg" and d.kind == "update")

    await transfer("agg", "model", "aggregator", 3, b"model of version 3")
    assert sorted(node for node, d in sent if d.kind == "model") == ["edge-0", "edge-1"]
    await transfer("edge-0", "update", "fl-trainer-0", 3, b"update on version 3")
    assert updates_to_aggregator() == 1
    await transfer("edge-0", "update", "fl-trainer-0", 3, b"update on version 3")  # resent: waiting for a model
    assert updates_to_aggregator() == 1
    await transfer("agg", "model", "aggregator", 3, b"model of version 3")  # the aggregator restarted
    await transfer("edge-0", "update", "fl-trainer-0", 3, b"update on version 3")
    assert updates_to_aggregator() == 2
