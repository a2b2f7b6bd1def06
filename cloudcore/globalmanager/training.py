"""A FederatedLearningJob's training workers run by the Kubeflow Training Operator (pure: no I/O).

With ``trainingWorkers.trainingPolicy.mode: Distributed`` (spec.py) the global manager creates the framework's
job (a ``PyTorchJob``, Worker replicas only: the aggregator stays the global manager's own pod) and the
operator creates, restarts and scales the workers; the scheduler places them. Raw data never moves: a worker
may land only on a node that holds one of the job's Datasets, at most one worker per node, and its data-wait
init container brings it the Dataset of the node it landed on.
"""

from __future__ import annotations

import copy
from typing import Any

from cloudcore.globalmanager.pods import (
    DATA_DIR,
    JOB_LABEL,
    TRAINER,
    TYPE_LABEL,
    Data,
    owner,
    trainer_env,
    worker_labels,
    worker_spec,
)
from cloudcore.globalmanager.spec import Distributed, JobError, distributed_of, training_dataset

GROUP = "kubeflow.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator injects its environment into, and judges exit codes of, this container
NODE_GROUP_LABEL = "apps.kubeedge.io/belonging-to"  # KubeEdge's NodeGroup controller labels its members so
HOSTNAME_LABEL = "kubernetes.io/hostname"
DATA_FILE = "train.csv"  # where a worker's data-wait puts its shard, whichever Dataset it is


def data_nodes(plan: Distributed, datasets: dict[str, dict[str, Any]]) -> dict[str, str]:
    """node → the job's Dataset on it (the shard a worker there trains on)."""
    nodes: dict[str, str] = {}
    for name in plan.datasets:
        _, node = training_dataset(datasets, name, "spec.trainingWorkers.datasets")
        if node in nodes:
            raise JobError(f"Datasets {nodes[node]!r} and {name!r} are both on node {node}: one per node")
        nodes[node] = name
    if plan.target_nodes:
        nodes = {n: d for n, d in nodes.items() if n in plan.target_nodes}
    if len(nodes) < plan.max_replicas:
        raise JobError(
            f"spec.trainingWorkers: up to {plan.max_replicas} workers, but the Datasets are on only {len(nodes)} "
            "of the target nodes"
        )
    return nodes


def build_training_job(job: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The PyTorchJob that runs the job's training workers (Worker replicas only), owned by the job; None for
    a Sequential job. JobError if its spec or a Dataset it names is wrong."""
    plan = distributed_of(job.get("spec") or {})
    if plan is None:
        return None
    nodes = data_nodes(plan, datasets)
    env = trainer_env(job)
    meta = job["metadata"]
    name = meta["name"]
    template = copy.deepcopy(plan.template)
    containers = template["spec"]["containers"]
    if not any(c.get("name") == CONTAINER for c in containers):
        containers[0]["name"] = CONTAINER
    names = ",".join(sorted(nodes.values()))
    data = Data(
        env=[_env("TRAIN_DATASET_URL", f"{DATA_DIR}/{DATA_FILE}")],
        wait_env=[_env("DATASET_NAMES", names), _env("DATA_FILE", DATA_FILE)],
    )
    worker = {"name": "WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    spec = worker_spec(job, TRAINER, template, env, worker=worker, data=data)
    spec.pop("restartPolicy", None)  # the replica's restartPolicy is the operator's to set on the pods
    spec.pop("nodeName", None)
    terms = [{"key": HOSTNAME_LABEL, "operator": "In", "values": sorted(nodes)}]
    if plan.target_node_groups:
        terms.append({"key": NODE_GROUP_LABEL, "operator": "In", "values": list(plan.target_node_groups)})
    spec["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": terms}]}
        },
        # one worker per node: a node's Dataset is one worker's shard
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "topologyKey": HOSTNAME_LABEL,
                    "labelSelector": {"matchLabels": {JOB_LABEL: name, TYPE_LABEL: TRAINER}},
                }
            ]
        },
    }
    body: dict[str, Any] = {
        "runPolicy": {"backoffLimit": plan.backoff_limit, "cleanPodPolicy": "None"},
        "pytorchReplicaSpecs": {
            "Worker": {
                "replicas": plan.replicas,
                "restartPolicy": "OnFailure",
                "template": {
                    "metadata": {
                        "labels": worker_labels(job, TRAINER, template),
                        "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                    },
                    "spec": spec,
                },
            }
        },
    }
    if plan.elastic:
        body["elasticPolicy"] = {
            "minReplicas": plan.min_replicas,
            "maxReplicas": plan.max_replicas,
            "maxRestarts": plan.backoff_limit,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": {JOB_LABEL: name},
            "ownerReferences": [owner(job)],
        },
        "spec": body,
    }


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def worker_replicas(training_job: dict[str, Any]) -> int:
    worker = ((training_job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).get("Worker") or {}
    return int(worker.get("replicas") or 0)


def summary(training_job: dict[str, Any] | None, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """What the job's status says of its operator job: its kind and name, the operator's latest condition,
    its workers' counts, and where each worker runs on which Dataset."""
    if training_job is None:
        return {"kind": KIND, "phase": "Creating"}
    status = training_job.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    last = conditions[-1] if conditions else {}
    replicas = (status.get("replicaStatuses") or {}).get("Worker") or {}
    return {
        "kind": KIND,
        "name": training_job["metadata"]["name"],
        "phase": str(last.get("type") or "Created"),
        "reason": str(last.get("reason") or ""),
        "message": str(last.get("message") or ""),
        "replicas": worker_replicas(training_job),
        "active": int(replicas.get("active") or 0),
        "succeeded": int(replicas.get("succeeded") or 0),
        "failed": int(replicas.get("failed") or 0),
        "workers": workers,
    }


def failed(training_job: dict[str, Any] | None) -> dict[str, Any] | None:
    """The operator's Failed condition, if it gave the job up (its backoff limit reached, say)."""
    for condition in ((training_job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return dict(condition)
    return None
