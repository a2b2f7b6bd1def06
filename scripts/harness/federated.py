"""Federated jobs for the tests, the demo and the benchmark: digits shards on disk, and the Dataset, Model and
FederatedLearningJob manifests (Sedna's shape) that train on them with the learning image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learning import data
from scripts.harness.learning_image import REF as LEARNING_IMAGE

SEDNA = "/apis/sedna.io/v1alpha1"


def write_shards(directory: Path, workers: int, *, iid: bool, seed: int = 0) -> tuple[list[Path], Path]:
    """digits split over ``workers`` (IID, or 2 label-sorted shards each), and the test set: CSV files."""
    directory.mkdir(parents=True, exist_ok=True)
    train, test = data.digits(seed)
    paths = []
    for i, shard in enumerate(data.shards(train, workers, iid=iid, seed=seed)):
        path = directory / f"shard-{i}.csv"
        data.write_csv(path, shard)
        paths.append(path)
    test_path = directory / "test.csv"
    data.write_csv(test_path, test)
    return paths, test_path


def dataset(name: str, url: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"url": url, "format": "csv", "nodeName": node},
    }


def model(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"url": url, "format": "kfl"},
    }


def _container(name: str, module: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": LEARNING_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python3", "-m", module],
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }


def job(
    name: str,
    *,
    aggregator_node: str,
    datasets: list[str],
    model_name: str,
    eval_dataset: str = "",
    rounds: int = 30,
    min_workers: int | None = None,
    round_timeout_s: float = 20,
    retries: int = 2,
    algorithm: str = "FedAvg",
    epochs: int = 1,
    model_sizes: str = "64,32,10",
    distributed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A FederatedLearningJob: one training worker per Dataset (on its node), the aggregator on ``aggregator_node``.

    ``distributed`` (``replicas``, and optionally ``minReplicas``, ``maxReplicas``, ``backoffLimit``, ...): Sedna's
    FL-V2 shape instead, its trainers a PyTorchJob of the Training Operator, on the Datasets' nodes."""
    hyper = {"EPOCHS": str(epochs), "BATCH_SIZE": "10", "LEARNING_RATE": "0.1", "MODEL_SIZES": model_sizes}
    spec: dict[str, Any] = {
        "aggregationWorker": {
            "model": {"name": model_name},
            "template": {
                "spec": {
                    "nodeName": aggregator_node,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        _container("aggregator", "learning.aggregator", {"SEED": "0", "MODEL_SIZES": model_sizes})
                    ],
                }
            },
        },
        "trainingWorkers": [
            {
                "dataset": {"name": d},
                "template": {
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [_container("trainer", "learning.trainer", {**hyper, "SEED": str(i + 1)})],
                    }
                },
            }
            for i, d in enumerate(datasets)
        ],
        "stopCondition": {"rounds": rounds},
        "roundTimeoutSeconds": round_timeout_s,
        "roundRetries": retries,
        "aggregation": {"algorithm": algorithm},
    }
    if distributed is not None:
        spec["trainingWorkers"] = {
            **distributed,
            "datasets": [{"name": d} for d in datasets],
            "trainingPolicy": {"mode": "Distributed", "framework": "PyTorch"},
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [_container("pytorch", "learning.trainer", {**hyper, "SEED": "1"})],
                }
            },
        }
    if eval_dataset:
        spec["aggregationWorker"]["dataset"] = {"name": eval_dataset}
    if min_workers is not None:
        spec["minTrainingWorkers"] = min_workers
    return {"apiVersion": "sedna.io/v1alpha1", "kind": "FederatedLearningJob", "metadata": {"name": name}, "spec": spec}
