"""The round protocol, sans I/O: which updates count, and when a round closes, is retried or fails.

The global model has a version ``round`` (0 before any aggregation). Each worker trains on version r and
sends an update based on r. The round closes when every expected worker has reported, or at its deadline
with at least ``min_workers`` (the quorum); below the quorum at the deadline it is retried (the model of
version r is offered again, updates received so far are kept) at most ``retries`` times, then the job fails
with ``QUORUM_NOT_REACHED``. An elastic job's workers come and go: ``expect`` changes how many the round
waits for (never fewer than the quorum). Updates based on another version (stale) and second updates of one
worker in one round (duplicates) are dropped and counted. Nothing here reads a clock: ``now`` is an
argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from learning.estimator import Weights

QUORUM_NOT_REACHED = "QuorumNotReached"


@dataclass(frozen=True)
class RoundPolicy:
    rounds: int = 30  # aggregations to run; the job stops after the last, or earlier at target_accuracy
    participants: int = 1  # workers expected in every round
    min_workers: int = 1  # the quorum: fewer updates at the deadline retry the round
    round_timeout_s: float = 60.0
    retries: int = 2  # retries of a round below the quorum before the job fails
    target_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, not {self.rounds}")
        if not 1 <= self.min_workers <= self.participants:
            raise ValueError(
                f"minTrainingWorkers must be 1 to {self.participants} (the workers), not {self.min_workers}"
            )
        if self.round_timeout_s <= 0:
            raise ValueError(f"roundTimeoutSeconds must be positive, not {self.round_timeout_s}")
        if self.retries < 0:
            raise ValueError(f"round retries must not be negative, not {self.retries}")


@dataclass(frozen=True)
class Update:
    worker: str
    round: int  # the version of the global model it was trained from
    num_samples: int
    weights: Weights
    metrics: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # bytes on the wire


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    STALE = "stale"
    DUPLICATE = "duplicate"
    EMPTY = "empty"  # no samples: it cannot weigh in an average


class Decision(enum.StrEnum):
    WAIT = "wait"
    CLOSE = "close"
    RETRY = "retry"
    FAIL = "fail"


class Rounds:
    def __init__(self, policy: RoundPolicy, *, round_: int = 0, now: float) -> None:
        self.policy = policy
        self.round = round_
        self.received: dict[str, Update] = {}
        self.attempt = 0
        self.deadline = now + policy.round_timeout_s
        self.opened_at = now
        self.stale = 0
        self.duplicate = 0
        self.expected = policy.participants

    def expect(self, workers: int) -> None:
        """The workers there are now (an elastic job's): a round closes as soon as that many have reported."""
        self.expected = max(workers, self.policy.min_workers)

    @property
    def finished(self) -> bool:
        return self.round >= self.policy.rounds

    def offer(self, update: Update) -> Verdict:
        if update.round != self.round:
            self.stale += 1
            return Verdict.STALE
        if update.worker in self.received:
            self.duplicate += 1
            return Verdict.DUPLICATE
        if update.num_samples <= 0:
            return Verdict.EMPTY
        self.received[update.worker] = update
        return Verdict.ACCEPTED

    def decide(self, now: float) -> Decision:
        if len(self.received) >= self.expected:
            return Decision.CLOSE
        if now < self.deadline:
            return Decision.WAIT
        if len(self.received) >= self.policy.min_workers:
            return Decision.CLOSE
        if self.attempt < self.policy.retries:
            return Decision.RETRY
        return Decision.FAIL

    def retry(self, now: float) -> None:
        """Offer the same version again for another timeout; what was received stays counted."""
        self.attempt += 1
        self.deadline = now + self.policy.round_timeout_s

    def close(self, now: float) -> list[Update]:
        """The updates of this round, in worker order; the next round opens."""
        updates = [self.received[w] for w in sorted(self.received)]
        self.round += 1
        self.received = {}
        self.attempt = 0
        self.opened_at = now
        self.deadline = now + self.policy.round_timeout_s
        return updates

    def failure_message(self) -> str:
        p = self.policy
        return (
            f"round {self.round + 1} got {len(self.received)} of the {p.min_workers} updates its quorum needs "
            f"(minTrainingWorkers) within {p.round_timeout_s:g} s, {p.retries + 1} times"
        )
