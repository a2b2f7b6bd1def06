"""Aggregation algorithms, by Sedna's names: ``FedAvg`` and ``FedProx``.

Both average the workers' weights, each weighted by its number of samples (McMahan et al., 2017). FedProx
(Li et al., 2020) differs on the workers' side: their local loss gains mu/2·|w - w_global|^2, which keeps
workers with skewed data near the global model; ``mu`` travels to them with every round's model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from learning.estimator import Weights


class AggregationError(ValueError):
    """Updates that cannot be averaged, or an algorithm the lib does not know."""


def weighted_mean(updates: Sequence[tuple[Weights, int]]) -> Weights:
    if not updates:
        raise AggregationError("no updates to aggregate")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise AggregationError("the updates carry no samples")
    shapes = [w.shape for w in updates[0][0]]
    for weights, _ in updates:
        if [w.shape for w in weights] != shapes:
            raise AggregationError(f"updates disagree on the model's shapes: {[w.shape for w in weights]} vs {shapes}")
    # float64 accumulation: the average of float32 weights must not depend on the order the workers reported in
    out: Weights = []
    for i, shape in enumerate(shapes):
        acc = np.zeros(shape, dtype=np.float64)
        for weights, n in updates:
            acc += np.asarray(weights[i], dtype=np.float64) * n
        out.append((acc / total).astype(np.float32))
    return out


@dataclass(frozen=True)
class FedAvg:
    name = "FedAvg"

    @property
    def mu(self) -> float:
        return 0.0

    def aggregate(self, updates: Sequence[tuple[Weights, int]]) -> Weights:
        return weighted_mean(updates)


@dataclass(frozen=True)
class FedProx:
    mu: float = 0.01
    name = "FedProx"

    def aggregate(self, updates: Sequence[tuple[Weights, int]]) -> Weights:
        return weighted_mean(updates)


Aggregation = FedAvg | FedProx


def get_aggregation(name: str, parameters: Mapping[str, object] | None = None) -> Aggregation:
    params = dict(parameters or {})
    if name == "FedAvg":
        return FedAvg()
    if name == "FedProx":
        mu = params.get("mu", 0.01)
        if not isinstance(mu, int | float | str):
            raise AggregationError(f"FedProx's mu must be a number, not {mu!r}")
        return FedProx(mu=float(mu))
    raise AggregationError(f"unknown aggregation algorithm {name!r}: FedAvg or FedProx")
