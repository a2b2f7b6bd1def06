"""Training data as the lib reads it: CSV files (a header row; the features, then the label in the last
column), and the digits splits the tests, the benchmark and the demo use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Data = tuple[NDArray[np.float32], NDArray[np.int64]]


def load_csv(path: str | Path) -> Data:
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if table.shape[1] < 2:
        raise ValueError(f"{path}: a training CSV needs feature columns and a label column")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def write_csv(path: str | Path, data: Data) -> int:
    x, y = data
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    rows = np.column_stack([x, y]).astype(np.float64)
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.6g")
    return len(y)


def split(data: Data, fraction: float, seed: int = 0) -> tuple[Data, Data]:
    """(the first 1 - fraction, the last fraction) of a shuffled copy."""
    x, y = data
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) - round(len(y) * fraction)
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def digits(seed: int = 0) -> tuple[Data, Data]:
    """scikit-learn's digits (shipped in its wheel; nothing is downloaded), scaled to [0, 1]: 1,437 training
    and 360 test samples."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only the host's tools need scikit-learn
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    raw: Any = load_digits()
    x = (raw.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, raw.target, test_size=0.2, random_state=seed)
    return (x_train, y_train.astype(np.int64)), (x_test, y_test.astype(np.int64))


def shards(train: Data, workers: int, *, iid: bool, seed: int = 0) -> list[Data]:
    """IID: a random equal split. Non-IID (McMahan et al.'s pathological split): sorted by label, cut into
    2 shards per worker, each worker given 2 shards at random, so it sees only a few classes."""
    x, y = train
    rng = np.random.default_rng(seed)
    if iid:
        parts = np.array_split(rng.permutation(len(y)), workers)
    else:
        pieces = np.array_split(np.argsort(y, kind="stable"), 2 * workers)
        chosen = rng.permutation(2 * workers)
        parts = [np.concatenate([pieces[chosen[2 * i]], pieces[chosen[2 * i + 1]]]) for i in range(workers)]
    return [(x[p], y[p]) for p in parts]
