"""The pods of a FederatedLearningJob, built from its templates (pure: no I/O).

As Sedna's global manager builds them: one aggregation worker and one training worker per
``trainingWorkers[i]``, each from its pod template, owned by the job (deleting the job deletes them), with
``restartPolicy: OnFailure`` and the host network (the lib reaches the node's local controller at
``$(HOST_IP):9100``). A training worker runs on its Dataset's node. Ours on top: an init container that waits
until the node's data loader has the whole Dataset and copies it into the pod (``/data``), so training starts
only on complete data; the aggregator's Model directory mounted from the node for the checkpoint and the
final model; the round settings as environment.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from cloudcore.globalmanager.spec import JobError, Settings, distributed_of, sequential_workers, training_dataset

__all__ = ["JobError", "Settings", "build_pods", "trainer_env"]

GROUP = "sedna.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
JOB_LABEL = "sedna.io/job-name"
TYPE_LABEL = "sedna.io/worker-type"  # train or aggregate
AGGREGATOR, TRAINER = "aggregate", "train"
DATA_DIR = "/data"
MODEL_DIR = "/model"
DATA_VOLUME = "sedna-data"
MODEL_VOLUME = "sedna-model"
WAIT_CONTAINER = "sedna-data-wait"
LC_PORT = 9100


def pod_name(job: dict[str, Any], kind: str, index: int = 0) -> str:
    name = job["metadata"]["name"]
    return f"{name}-aggregator" if kind == AGGREGATOR else f"{name}-trainer-{index}"


def _env(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


def owner(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FederatedLearningJob",
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _file_of(url: str) -> str:
    return PurePosixPath(url.removeprefix("file://")).name or "data"


def _wait_container(image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": WAIT_CONTAINER,
        "image": image,
        "command": ["python3", "-m", "learning.datawait"],
        "env": [*env, _env("DATA_DIR", DATA_DIR)],
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": DATA_DIR}],
    }


@dataclass(frozen=True)
class Data:
    """What a worker trains or evaluates on: the env its container gets, and the env that tells its data-wait
    init container which Dataset to bring (one name; or, for an operator's workers, the names of which the
    one on the worker's node is its shard)."""

    env: list[dict[str, Any]]
    wait_env: list[dict[str, Any]]

    @classmethod
    def of(cls, kind: str, dataset: dict[str, Any]) -> Data:
        name = dataset["metadata"]["name"]
        url_env = "TRAIN_DATASET_URL" if kind == TRAINER else "EVAL_DATASET_URL"
        file = _file_of(str((dataset.get("spec") or {}).get("url") or ""))
        return cls([_env("DATASET_NAME", name), _env(url_env, f"{DATA_DIR}/{file}")], [_env("DATASET_NAME", name)])


def worker_spec(
    job: dict[str, Any],
    kind: str,
    template: dict[str, Any],
    env: list[dict[str, Any]],
    *,
    worker: dict[str, Any],
    data: Data | None,
) -> dict[str, Any]:
    """A worker's pod spec from its template: the lib's environment (``worker`` names it), the data-wait init
    container and the data volume, the host network."""
    meta = job["metadata"]
    spec = copy.deepcopy(template.get("spec") or {})
    containers = spec.get("containers") or []
    if not containers:
        raise JobError(f"the {'aggregation' if kind == AGGREGATOR else 'training'} worker's template has no containers")
    base_env: list[dict[str, Any]] = [
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        _env("LC_SERVER", f"http://$(HOST_IP):{LC_PORT}"),
        _env("NAMESPACE", meta.get("namespace", "default")),
        _env("JOB_NAME", meta["name"]),
        worker,
    ]
    container_env = [*base_env, *env]
    mounts: list[dict[str, Any]] = []
    if data is not None:
        container_env += data.env
        spec["volumes"] = [*(spec.get("volumes") or []), {"name": DATA_VOLUME, "emptyDir": {}}]
        mounts.append({"name": DATA_VOLUME, "mountPath": DATA_DIR})
        spec["initContainers"] = [
            _wait_container(str(containers[0].get("image", "")), [*base_env, *data.wait_env]),
            *(spec.get("initContainers") or []),
        ]
    for container in containers:
        container["env"] = [*container_env, *(container.get("env") or [])]
        if mounts:
            container["volumeMounts"] = [*(container.get("volumeMounts") or []), *mounts]
    spec.setdefault("restartPolicy", "OnFailure")
    spec["hostNetwork"] = True  # the lib reaches the local controller on the node's own address
    spec.setdefault("dnsPolicy", "ClusterFirstWithHostNet")
    return spec


def worker_labels(job: dict[str, Any], kind: str, template: dict[str, Any]) -> dict[str, str]:
    return {
        **((template.get("metadata") or {}).get("labels") or {}),
        JOB_LABEL: job["metadata"]["name"],
        TYPE_LABEL: kind,
    }


def _pod(
    job: dict[str, Any],
    kind: str,
    index: int,
    template: dict[str, Any],
    env: list[dict[str, Any]],
    *,
    node: str | None,
    dataset: dict[str, Any] | None,
) -> dict[str, Any]:
    meta = job["metadata"]
    name = pod_name(job, kind, index)
    data = Data.of(kind, dataset) if dataset is not None else None
    spec = worker_spec(job, kind, template, env, worker=_env("WORKER_NAME", name), data=data)
    if node and not spec.get("nodeName"):
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": worker_labels(job, kind, template),
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
            "ownerReferences": [owner(job)],
        },
        "spec": spec,
    }


def model_location(model: dict[str, Any] | None, job_uid: str) -> tuple[str, str, str]:
    """(the node directory mounted at /model, MODEL_URL, CHECKPOINT_DIR) for the job's Model."""
    url = str(((model or {}).get("spec") or {}).get("url") or "").removeprefix("file://")
    if not url.startswith("/"):
        raise JobError(f"the Model's spec.url must be a local path on the aggregator's node, not {url!r}")
    path = PurePosixPath(url)
    directory, file = (str(path.parent), path.name) if path.suffix else (str(path), "model.kfl")
    return directory, f"{MODEL_DIR}/{file}", f"{MODEL_DIR}/.checkpoint-{job_uid}"


def build_pods(
    job: dict[str, Any], datasets: dict[str, dict[str, Any]], models: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every pod the job should have; JobError if its spec or a Dataset/Model it names is missing."""
    spec = job.get("spec") or {}
    settings = Settings.of(job)
    trainers = sequential_workers(spec)
    if not trainers:
        raise JobError("spec.trainingWorkers is empty")
    aggregation = spec.get("aggregationWorker") or {}
    model_name = model_of(job)
    if model_name not in models:
        raise JobError(f"spec.aggregationWorker.model: Model {model_name!r} does not exist")
    directory, model_url, checkpoint = model_location(models[model_name], job["metadata"]["uid"])
    agg_env = [
        _env("PARTICIPANTS_COUNT", str(settings.participants)),
        _env("ROUNDS", str(settings.rounds)),
        _env("MIN_TRAINING_WORKERS", str(settings.min_training_workers)),
        _env("ROUND_TIMEOUT_SECONDS", f"{settings.round_timeout_seconds:g}"),
        _env("ROUND_RETRIES", str(settings.round_retries)),
        _env("AGG_ALGORITHM", settings.algorithm),
        _env("AGG_PARAMETERS", json.dumps(settings.parameters or {})),
        _env("MODEL_NAME", model_name),
        _env("MODEL_URL", model_url),
        _env("CHECKPOINT_DIR", checkpoint),
    ]
    if settings.target_accuracy is not None:
        agg_env.append(_env("TARGET_ACCURACY", f"{settings.target_accuracy:g}"))
    distributed = distributed_of(spec) is not None
    if distributed:  # the operator's workers come and go: the aggregator asks which there are
        agg_env.append(_env("ELASTIC_WORKERS", "true"))
    eval_name = str((aggregation.get("dataset") or {}).get("name") or "")
    if eval_name and eval_name not in datasets:
        raise JobError(f"spec.aggregationWorker.dataset: Dataset {eval_name!r} does not exist")
    agg = _pod(
        job,
        AGGREGATOR,
        0,
        aggregation.get("template") or {},
        agg_env,
        node=None,
        dataset=datasets.get(eval_name) if eval_name else None,
    )
    agg["spec"].setdefault("volumes", []).append(
        {"name": MODEL_VOLUME, "hostPath": {"path": directory, "type": "DirectoryOrCreate"}}
    )
    for container in agg["spec"]["containers"]:
        container.setdefault("volumeMounts", []).append({"name": MODEL_VOLUME, "mountPath": MODEL_DIR})
    pods = [agg]
    if distributed:
        return pods  # the training workers are the operator's (training.py)
    for i, worker in enumerate(trainers):
        name = str((worker.get("dataset") or {}).get("name") or "")
        dataset, node = training_dataset(datasets, name, f"spec.trainingWorkers[{i}].dataset")
        pods.append(_pod(job, TRAINER, i, worker.get("template") or {}, trainer_env(job), node=node, dataset=dataset))
    return pods


def model_of(job: dict[str, Any]) -> str:
    aggregation = (job.get("spec") or {}).get("aggregationWorker") or {}
    return str((aggregation.get("model") or {}).get("name") or "")


def trainer_env(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The round settings a training worker is given."""
    settings = Settings.of(job)
    return [
        _env("PARTICIPANTS_COUNT", str(settings.participants)),
        _env("AGG_ALGORITHM", settings.algorithm),
        _env("MODEL_NAME", model_of(job)),
    ]
