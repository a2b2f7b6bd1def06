"""What the lib needs of a model, and the models it ships: a numpy MLP and a scikit-learn adapter.

Any framework's model takes part in federated training by implementing ``Estimator``: it trains for some local
epochs (optionally pulled towards the global weights, for FedProx), evaluates, and gives and takes its weights
as a list of numpy arrays in a fixed order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Weights = list[NDArray[np.float32]]


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    loss: float


class Estimator(Protocol):
    def train(
        self, x: NDArray[Any], y: NDArray[Any], *, epochs: int, prox: tuple[Weights, float] | None = None
    ) -> float:
        """Local training; returns the mean training loss of the last epoch. ``prox`` is (global weights, mu):
        FedProx's proximal term mu/2·|w - w_global|^2 added to the loss."""
        ...

    def evaluate(self, x: NDArray[Any], y: NDArray[Any]) -> Metrics: ...

    def get_weights(self) -> Weights: ...

    def set_weights(self, weights: Weights) -> None: ...


class MLP:
    """A fully connected network with ReLU hidden layers and a softmax output, trained by minibatch SGD with a
    hand-written backward pass. Deterministic for a given seed."""

    def __init__(
        self, sizes: tuple[int, ...] = (64, 32, 10), *, lr: float = 0.1, batch_size: int = 10, seed: int = 0
    ) -> None:
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least an input and an output size")
        self.sizes = sizes
        self.lr = lr
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self.params: Weights = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            scale = np.sqrt(2.0 / fan_in)  # He initialization, for ReLU
            self.params.append((self._rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32))
            self.params.append(np.zeros(fan_out, dtype=np.float32))

    def _forward(self, x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        activations = [x]
        layers = len(self.params) // 2
        for i in range(layers):
            z = activations[-1] @ self.params[2 * i] + self.params[2 * i + 1]
            if i < layers - 1:
                activations.append(np.maximum(z, 0))
            else:
                z = z - z.max(axis=1, keepdims=True)
                e = np.exp(z)
                activations.append(e / e.sum(axis=1, keepdims=True))
        return activations

    def _step(self, x: NDArray[np.float32], y: NDArray[np.int64], prox: tuple[Weights, float] | None) -> float:
        acts = self._forward(x)
        probs = acts[-1]
        n = len(y)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        delta = probs.copy()
        delta[np.arange(n), y] -= 1
        delta /= n
        grads: Weights = [np.empty(0, dtype=np.float32)] * len(self.params)
        for i in reversed(range(len(self.params) // 2)):
            grads[2 * i] = acts[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i > 0:
                delta = (delta @ self.params[2 * i].T) * (acts[i] > 0)
        for j, grad in enumerate(grads):
            step = grad + prox[1] * (self.params[j] - prox[0][j]) if prox is not None else grad
            self.params[j] = (self.params[j] - self.lr * step).astype(np.float32)
        return loss

    def train(
        self, x: NDArray[Any], y: NDArray[Any], *, epochs: int, prox: tuple[Weights, float] | None = None
    ) -> float:
        x32, labels = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
        loss = 0.0
        for _ in range(epochs):
            order = self._rng.permutation(len(labels))
            losses = []
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                losses.append(self._step(x32[batch], labels[batch], prox) * len(batch))
            loss = sum(losses) / max(1, len(labels))
        return loss

    def evaluate(self, x: NDArray[Any], y: NDArray[Any]) -> Metrics:
        labels = np.asarray(y, dtype=np.int64)
        probs = self._forward(np.asarray(x, dtype=np.float32))[-1]
        if len(labels) == 0:
            return Metrics(0.0, 0.0)
        loss = float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())
        return Metrics(float((probs.argmax(axis=1) == labels).mean()), loss)

    def get_weights(self) -> Weights:
        return [p.copy() for p in self.params]

    def set_weights(self, weights: Weights) -> None:
        if [w.shape for w in weights] != [p.shape for p in self.params]:
            raise ValueError(
                f"weights of shapes {[w.shape for w in weights]} do not fit this MLP {[p.shape for p in self.params]}"
            )
        self.params = [np.asarray(w, dtype=np.float32).copy() for w in weights]


class SklearnEstimator:
    """A scikit-learn ``MLPClassifier`` (or any estimator with ``partial_fit``, ``coefs_`` and ``intercepts_``)
    as an Estimator. scikit-learn is imported by the caller, not by the lib."""

    def __init__(self, model: Any, classes: NDArray[Any]) -> None:
        self.model = model
        self.classes = classes

    def train(
        self, x: NDArray[Any], y: NDArray[Any], *, epochs: int, prox: tuple[Weights, float] | None = None
    ) -> float:
        if prox is not None:
            raise ValueError("the scikit-learn adapter does not support FedProx's proximal term; use FedAvg")
        for _ in range(epochs):
            self.model.partial_fit(x, y, classes=self.classes)
        return float(getattr(self.model, "loss_", 0.0))

    def evaluate(self, x: NDArray[Any], y: NDArray[Any]) -> Metrics:
        probs = self.model.predict_proba(x)
        index = {c: i for i, c in enumerate(self.model.classes_)}
        rows = np.array([index[v] for v in y])
        loss = float(-np.log(probs[np.arange(len(rows)), rows] + 1e-12).mean()) if len(rows) else 0.0
        return Metrics(float(self.model.score(x, y)), loss)

    def get_weights(self) -> Weights:
        out: Weights = []
        for w, b in zip(self.model.coefs_, self.model.intercepts_, strict=True):
            out += [np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)]
        return out

    def set_weights(self, weights: Weights) -> None:
        self.model.coefs_ = [np.asarray(w, dtype=np.float64) for w in weights[0::2]]
        self.model.intercepts_ = [np.asarray(b, dtype=np.float64) for b in weights[1::2]]
