"""A Distributed FederatedLearningJob's PyTorchJob, built without a cluster (cloudcore/globalmanager/training.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudcore.globalmanager import training
from cloudcore.globalmanager.pods import JobError, Settings, build_pods

MODELS = {"m": {"metadata": {"name": "m"}, "spec": {"url": "/models/fl/model.kfl"}}}
DATASETS = {
    f"d{i}": {"metadata": {"name": f"d{i}"}, "spec": {"url": f"/data/shard-{i}.csv", "nodeName": f"edge-{i}"}}
    for i in range(3)
}


def _job(**workers: Any) -> dict[str, Any]:
    container = {"name": "trainer", "image": "img"}
    return {
        "metadata": {"name": "fl", "namespace": "ns", "uid": "job-uid"},
        "spec": {
            "aggregationWorker": {"model": {"name": "m"}, "template": {"spec": {"containers": [container]}}},
            "trainingWorkers": {
                "replicas": 2,
                "datasets": [{"name": f"d{i}"} for i in range(3)],
                "trainingPolicy": {"mode": "Distributed", "framework": "PyTorch"},
                "template": {"spec": {"containers": [container]}},
                **workers,
            },
        },
    }


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_pytorchjob_runs_worker_replicas_on_the_data_nodes_one_per_node() -> None:
    ptj = training.build_training_job(_job(minReplicas=1, maxReplicas=3), DATASETS)
    assert ptj is not None
    assert (ptj["apiVersion"], ptj["kind"], ptj["metadata"]["name"]) == ("kubeflow.org/v1", "PyTorchJob", "fl")
    assert ptj["metadata"]["ownerReferences"][0]["uid"] == "job-uid"
    worker = ptj["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(ptj["spec"]["pytorchReplicaSpecs"]) == {"Worker"}  # the aggregator is the global manager's pod
    assert (worker["replicas"], worker["restartPolicy"]) == (2, "OnFailure")
    assert ptj["spec"]["elasticPolicy"] == {"minReplicas": 1, "maxReplicas": 3, "maxRestarts": 6}
    spec = worker["template"]["spec"]
    assert "nodeName" not in spec and "restartPolicy" not in spec  # the scheduler and the operator decide
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["edge-0", "edge-1", "edge-2"]}
    ]
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert spec["containers"][0]["name"] == "pytorch"  # where the operator puts its environment
    env = _env(spec["containers"][0])
    assert env["WORKER_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the operator names the pods
    assert env["TRAIN_DATASET_URL"] == "/data/train.csv"
    wait = _env(spec["initContainers"][0])
    assert (wait["DATASET_NAMES"], wait["DATA_FILE"]) == ("d0,d1,d2", "train.csv")
    assert worker["template"]["metadata"]["labels"] == {"sedna.io/job-name": "fl", "sedna.io/worker-type": "train"}


def test_a_distributed_job_gets_only_its_aggregator_as_a_pod_told_to_follow_the_members() -> None:
    job = _job(targetNodeGroups=["line-1"])
    pods = build_pods(job, DATASETS, MODELS)
    assert [p["metadata"]["name"] for p in pods] == ["fl-aggregator"]
    env = _env(pods[0]["spec"]["containers"][0])
    assert (env["PARTICIPANTS_COUNT"], env["MIN_TRAINING_WORKERS"], env["ELASTIC_WORKERS"]) == ("2", "2", "true")
    assert Settings.of(_job(minReplicas=1, maxReplicas=3)).min_training_workers == 1
    ptj = training.build_training_job(job, DATASETS)
    assert ptj is not None
    terms = ptj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["affinity"]["nodeAffinity"]
    expressions = terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "apps.kubeedge.io/belonging-to", "operator": "In", "values": ["line-1"]} in expressions
    assert "elasticPolicy" not in ptj["spec"]


def test_a_sequential_job_in_the_object_shape_is_one_pod_per_dataset() -> None:
    job = _job(trainingPolicy={"mode": "Sequential"})
    pods = build_pods(job, DATASETS, MODELS)
    assert [p["spec"].get("nodeName") for p in pods] == [None, "edge-0", "edge-1", "edge-2"]
    assert training.build_training_job(job, DATASETS) is None


@pytest.mark.parametrize(
    ("workers", "datasets", "message"),
    [
        ({"trainingPolicy": {"mode": "Parallel"}}, DATASETS, "mode must be one of"),
        ({"trainingPolicy": {"mode": "Distributed", "framework": "MXNet"}}, DATASETS, "framework 'MXNet' is not"),
        ({"replicas": 4}, DATASETS, "up to 4 workers but 3 Datasets"),
        ({"replicas": 2, "maxReplicas": 1}, DATASETS, "1 <= minReplicas <= replicas <= maxReplicas"),
        ({"maxReplicas": 5}, DATASETS, "up to 5 workers but 3 Datasets"),
        ({"minReplicas": 3}, DATASETS, "1 <= minReplicas <= replicas"),
        ({"replicas": -1}, DATASETS, "replicas must be a whole number"),
        ({"targetNodes": ["edge-0"]}, DATASETS, "on only 1 of the target nodes"),
        ({}, {**DATASETS, "d2": {"metadata": {"name": "d2"}, "spec": {"nodeName": "edge-0"}}}, "both on node edge-0"),
        ({}, {k: v for k, v in DATASETS.items() if k != "d1"}, "Dataset 'd1' does not exist"),
        ({"datasets": []}, DATASETS, "must list the job's Datasets"),
        ({"template": {"spec": {}}}, DATASETS, "template has no containers"),
    ],
)
def test_a_distributed_spec_that_cannot_run_is_refused_naming_the_field(
    workers: dict[str, Any], datasets: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobError, match=message):
        training.build_training_job(_job(**workers), datasets)


def test_the_status_names_the_operator_job_and_its_workers() -> None:
    ptj = training.build_training_job(_job(), DATASETS)
    assert ptj is not None
    ptj["status"] = {
        "conditions": [
            {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
            {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "running"},
        ],
        "replicaStatuses": {"Worker": {"active": 2}},
    }
    ptj["metadata"]["name"] = "fl"
    summary = training.summary(ptj, [{"name": "fl-worker-0", "node": "edge-1", "dataset": "d1"}])
    assert summary["phase"] == "Running" and summary["active"] == 2 and summary["replicas"] == 2
    assert training.failed(ptj) is None
    ptj["status"]["conditions"].append({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"})
    assert (training.failed(ptj) or {})["reason"] == "BackoffLimitExceeded"
