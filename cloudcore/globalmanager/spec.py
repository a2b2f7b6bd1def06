"""A FederatedLearningJob's spec as the global manager reads it (pure: no I/O): the round settings, and
how its training workers run.

Two shapes of ``spec.trainingWorkers``. Sedna's list, one worker per Dataset, each on its Dataset's node
(``Sequential``: the global manager creates the pods). And Sedna's "Federated Learning V2" object:

    trainingWorkers:
      replicas: 3                      # minReplicas/maxReplicas (optional): the elastic range
      datasets: [{name: shard-0}, ...] # a Dataset per data node: a worker trains on the one on its node
      targetNodes: [...]               # optional: only these nodes
      targetNodeGroups: [...]          # optional: only nodes of these KubeEdge NodeGroups
      trainingPolicy: {mode: Distributed, framework: PyTorch}
      backoffLimit: 6                  # the operator's: container restarts before the job fails
      template: {...}                  # the pod template of every worker

``mode: Distributed`` hands the workers to the Kubeflow Training Operator (training.py); ``mode:
Sequential`` with the object form is the list form with the one template for every Dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("Sequential", "Distributed")
FRAMEWORKS = ("PyTorch",)
DEFAULT_BACKOFF_LIMIT = 6


class JobError(ValueError):
    """A job spec the global manager cannot build pods from; the message names the field."""


@dataclass(frozen=True)
class Settings:
    """The job's round settings: Sedna's spec plus our optional fields, with their defaults."""

    rounds: int = 30
    target_accuracy: float | None = None
    min_training_workers: int = 0  # 0: all of them
    round_timeout_seconds: float = 60.0
    round_retries: int = 2
    algorithm: str = "FedAvg"
    parameters: dict[str, Any] | None = None

    participants: int = 1  # the workers every round expects (the replicas, when the operator runs them)

    @classmethod
    def of(cls, job: dict[str, Any]) -> Settings:
        spec = job.get("spec") or {}
        aggregation = spec.get("aggregation") or {}
        stop = spec.get("stopCondition") or {}
        plan = distributed_of(spec)
        if plan is None:
            workers = len(sequential_workers(spec))
            participants, quorum, most = workers, workers, workers
        else:  # elastic: every round expects the workers there are; fewer than minReplicas is below the quorum
            participants, quorum, most = plan.replicas, plan.min_replicas, plan.max_replicas
        settings = cls(
            rounds=int(stop.get("rounds", spec.get("rounds", 30))),
            target_accuracy=float(stop["targetAccuracy"]) if "targetAccuracy" in stop else None,
            min_training_workers=int(spec.get("minTrainingWorkers") or quorum),
            round_timeout_seconds=float(spec.get("roundTimeoutSeconds", 60)),
            round_retries=int(spec.get("roundRetries", 2)),
            algorithm=str(aggregation.get("algorithm", "FedAvg")),
            parameters=dict(aggregation.get("parameters") or {}),
            participants=participants,
        )
        if settings.rounds < 1:
            raise JobError(f"spec.stopCondition.rounds must be at least 1, not {settings.rounds}")
        if not 1 <= settings.min_training_workers <= max(1, most):
            raise JobError(f"spec.minTrainingWorkers must be 1 to {most}, not {settings.min_training_workers}")
        if settings.algorithm not in ("FedAvg", "FedProx"):
            raise JobError(f"spec.aggregation.algorithm must be FedAvg or FedProx, not {settings.algorithm!r}")
        return settings


@dataclass(frozen=True)
class Distributed:
    replicas: int
    min_replicas: int
    max_replicas: int
    datasets: tuple[str, ...]
    target_nodes: tuple[str, ...]
    target_node_groups: tuple[str, ...]
    backoff_limit: int
    template: dict[str, Any]

    @property
    def elastic(self) -> bool:
        return (self.min_replicas, self.max_replicas) != (self.replicas, self.replicas)


def training_dataset(datasets: dict[str, dict[str, Any]], name: str, field: str) -> tuple[dict[str, Any], str]:
    """A training worker's Dataset and the node it is bound to; JobError naming ``field`` if either is missing."""
    dataset = datasets.get(name)
    if dataset is None:
        raise JobError(f"{field}: Dataset {name!r} does not exist")
    node = str((dataset.get("spec") or {}).get("nodeName") or "")
    if not node:
        raise JobError(f"Dataset {name!r} has no spec.nodeName: a training worker runs where its data is")
    return dataset, node


def _names(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise JobError(f"spec.trainingWorkers.{field} must be a list of names")
    return tuple(value)


def _count(workers: dict[str, Any], field: str, default: int) -> int:
    value = workers.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise JobError(f"spec.trainingWorkers.{field} must be a whole number, not {value!r}")
    return value


def mode_of(spec: dict[str, Any]) -> str:
    workers = spec.get("trainingWorkers")
    if not isinstance(workers, dict):
        return "Sequential"
    policy = workers.get("trainingPolicy") or {}
    mode = str(policy.get("mode") or "Sequential")
    if mode not in MODES:
        raise JobError(f"spec.trainingWorkers.trainingPolicy.mode must be one of {list(MODES)}, not {mode!r}")
    if mode == "Distributed":
        framework = str(policy.get("framework") or "PyTorch")
        if framework not in FRAMEWORKS:
            raise JobError(
                f"spec.trainingWorkers.trainingPolicy.framework {framework!r} is not supported: "
                f"one of {list(FRAMEWORKS)} (the Training Operator's PyTorchJob)"
            )
    return mode


def dataset_names(workers: dict[str, Any]) -> tuple[str, ...]:
    datasets = workers.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise JobError("spec.trainingWorkers.datasets must list the job's Datasets")
    names = tuple(str((d or {}).get("name") or "") if isinstance(d, dict) else "" for d in datasets)
    if not all(names):
        raise JobError("every entry of spec.trainingWorkers.datasets needs a name")
    return names


def sequential_workers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The list form of ``trainingWorkers``: as written, or one worker per Dataset of the object form."""
    workers = spec.get("trainingWorkers")
    if isinstance(workers, list):
        return workers
    if not isinstance(workers, dict):
        raise JobError("spec.trainingWorkers must be a list of workers or one object with trainingPolicy")
    template = workers.get("template") or {}
    return [{"dataset": {"name": name}, "template": template} for name in dataset_names(workers)]


def distributed_of(spec: dict[str, Any]) -> Distributed | None:
    """The Distributed settings of a job's spec; None for a Sequential job. JobError names a bad field."""
    if mode_of(spec) != "Distributed":
        return None
    workers = spec["trainingWorkers"]
    datasets = dataset_names(workers)
    replicas = _count(workers, "replicas", len(datasets))
    low = _count(workers, "minReplicas", replicas)
    high = _count(workers, "maxReplicas", max(replicas, low))
    if not 1 <= low <= replicas <= high:
        raise JobError(
            f"spec.trainingWorkers needs 1 <= minReplicas <= replicas <= maxReplicas, not {low} <= {replicas} <= {high}"
        )
    if high > len(datasets):
        raise JobError(
            f"spec.trainingWorkers: up to {high} workers but {len(datasets)} Datasets: "
            "a worker trains on the Dataset of its node, one worker per node"
        )
    template = workers.get("template") or {}
    if not ((template.get("spec") or {}).get("containers")):
        raise JobError("spec.trainingWorkers.template has no containers")
    return Distributed(
        replicas=replicas,
        min_replicas=low,
        max_replicas=high,
        datasets=datasets,
        target_nodes=_names(workers.get("targetNodes"), "targetNodes"),
        target_node_groups=_names(workers.get("targetNodeGroups"), "targetNodeGroups"),
        backoff_limit=_count(workers, "backoffLimit", DEFAULT_BACKOFF_LIMIT),
        template=template,
    )
