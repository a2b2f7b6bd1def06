"""The aggregator's checkpoint: the global weights, their version and the round history, written after every
aggregation (atomically: a new file renamed over the old), read back by a restarted aggregator."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning import weights as blobs
from learning.estimator import Weights

NAME = "checkpoint.kfl"


@dataclass
class Checkpoint:
    round: int
    weights: Weights
    history: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def save(directory: Path, checkpoint: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"round": checkpoint.round, "history": checkpoint.history, "counters": checkpoint.counters}
    tmp = directory / f".{NAME}.tmp"
    with tmp.open("wb") as f:
        f.write(blobs.encode(checkpoint.weights, meta))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / NAME)


def load(directory: Path) -> Checkpoint | None:
    """The last checkpoint, or None if there is none; a damaged one raises BlobError (never half-loaded)."""
    with contextlib.suppress(FileNotFoundError):
        weights, meta = blobs.decode((directory / NAME).read_bytes())
        return Checkpoint(
            int(meta["round"]), weights, list(meta.get("history") or []), dict(meta.get("counters") or {})
        )
    return None
