"""``AggregationServer``: the aggregator's loop.

Publish the global model of version r; take updates from the node's inbox and let ``Rounds`` judge them;
when the round closes, average, evaluate, checkpoint and publish version r + 1, until the last round or the
target accuracy; below the quorum, offer version r again, then fail. A restarted aggregator resumes from its
checkpoint at the version it last wrote, so at most the round in progress is repeated. An elastic job's
aggregator asks the local controller which trainers there are (the global manager tells it) and expects an
update from each of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning import checkpoint as checkpoints
from learning import weights as blobs
from learning.aggregation import Aggregation
from learning.client import LCClient
from learning.estimator import Metrics, Weights
from learning.rounds import QUORUM_NOT_REACHED, Decision, RoundPolicy, Rounds, Update, Verdict

log = logging.getLogger("learning.server")

HISTORY = 100  # rounds kept in the checkpoint and reported: the status must stay small


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    round: int
    reason: str = ""
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class AggregationServer:
    def __init__(
        self,
        aggregation: Aggregation,
        policy: RoundPolicy,
        *,
        lc: LCClient,
        initial_weights: Weights,
        checkpoint_dir: Path,
        evaluate: Callable[[Weights], Metrics] | None = None,
        hyper: dict[str, Any] | None = None,
        poll_s: float = 1.0,
        elastic: bool = False,
    ) -> None:
        self.aggregation = aggregation
        self.policy = policy
        self.lc = lc
        self.checkpoint_dir = checkpoint_dir
        self.evaluate = evaluate
        self.hyper = dict(hyper or {})
        self.poll_s = poll_s
        saved = checkpoints.load(checkpoint_dir)
        self.weights = saved.weights if saved else initial_weights
        self.history: list[dict[str, Any]] = saved.history if saved else []
        self.counters: dict[str, int] = saved.counters if saved else {"stale": 0, "duplicate": 0, "retries": 0}
        self.rounds = Rounds(policy, round_=saved.round if saved else 0, now=time.monotonic())
        self.resumed = saved is not None
        self.model_bytes = 0
        self.elastic = elastic
        self.members: list[str] | None = None
        self._members_at = -float("inf")

    def _publish(self, *, final: bool = False) -> None:
        meta = {"kind": "model", "round": self.rounds.round, "final": final, "mu": self.aggregation.mu, **self.hyper}
        blob = blobs.encode(self.weights, meta)
        self.model_bytes = len(blob)
        self.lc.publish_model(blob, self.rounds.round)

    def _report(self, status: str, **extra: Any) -> None:
        info = {
            "currentRound": self.rounds.round,
            "rounds": self.policy.rounds,
            "history": self.history[-HISTORY:],
            "dropped": {"stale": self.counters["stale"], "duplicate": self.counters["duplicate"]},
            **({"members": self.members or [], "expected": self.rounds.expected} if self.elastic else {}),
            **extra,
        }
        self.lc.report("aggregate", status, info)

    def _reached_target(self) -> bool:
        target = self.policy.target_accuracy
        return target is not None and bool(self.history) and float(self.history[-1].get("accuracy", 0)) >= target

    def run(self) -> Outcome:
        if self.resumed:
            log.info("resumed from the checkpoint at round %d", self.rounds.round)
        if self.rounds.finished or self._reached_target():
            return self._finish()
        self._publish()
        self._report("running")
        while True:
            blob = self.lc.next_update(wait=max(0.0, min(self.poll_s, self.rounds.deadline - time.monotonic())))
            if blob is not None:
                self._offer(blob)
            now = time.monotonic()
            if self.elastic and now - self._members_at >= self.poll_s:
                self._refresh_members(now)
            decision = self.rounds.decide(now)
            if decision is Decision.CLOSE:
                self._aggregate(now)
                if self.rounds.finished or self._reached_target():
                    return self._finish()
                self._publish()
                self._report("running")
            elif decision is Decision.RETRY:
                self.counters["retries"] += 1
                log.warning(
                    "round %d: %d of %d updates at the deadline, below the quorum of %d: retrying",
                    self.rounds.round + 1,
                    len(self.rounds.received),
                    self.rounds.expected,
                    self.policy.min_workers,
                )
                self.rounds.retry(now)
                self._publish()
            elif decision is Decision.FAIL:
                message = self.rounds.failure_message()
                log.error("job failed: %s", message)
                self._report("failed", reason=QUORUM_NOT_REACHED, message=message)
                return Outcome(False, self.rounds.round, QUORUM_NOT_REACHED, message)

    def _refresh_members(self, now: float) -> None:
        self._members_at = now
        members = self.lc.members()
        if members is None or members == self.members:
            return
        log.info("the trainers are now %s (was %s)", members, self.members)
        self.members = members
        self.rounds.expect(len(members))
        self._report("running")

    def _offer(self, blob: bytes) -> None:
        try:
            weights, meta = blobs.decode(blob)
            update = Update(
                worker=str(meta["worker"]),
                round=int(meta["round"]),
                num_samples=int(meta["num_samples"]),
                weights=weights,
                metrics=dict(meta.get("metrics") or {}),
                size=len(blob),
            )
        except (blobs.BlobError, KeyError, TypeError, ValueError) as exc:
            log.warning("dropped an update that is not one: %s", exc)
            return
        if [w.shape for w in update.weights] != [w.shape for w in self.weights]:
            log.warning("dropped the update of %s: its shapes do not match the model's", update.worker)
            return
        verdict = self.rounds.offer(update)
        if verdict is Verdict.STALE:
            self.counters["stale"] += 1
        elif verdict is Verdict.DUPLICATE:
            self.counters["duplicate"] += 1
        log.info("update from %s for round %d: %s", update.worker, update.round + 1, verdict)

    def _aggregate(self, now: float) -> None:
        opened = self.rounds.opened_at
        updates = self.rounds.close(now)
        self.weights = self.aggregation.aggregate([(u.weights, u.num_samples) for u in updates])
        samples = sum(u.num_samples for u in updates)
        entry: dict[str, Any] = {
            "round": self.rounds.round,
            "workers": len(updates),
            "loss": sum(float(u.metrics.get("train_loss", 0)) * u.num_samples for u in updates) / samples,
            "bytesUp": sum(u.size for u in updates),
            "bytesDown": self.model_bytes * self.rounds.expected,
            "seconds": round(now - opened, 3),
        }
        if self.evaluate is not None:
            m = self.evaluate(self.weights)
            entry["accuracy"], entry["evalLoss"] = m.accuracy, m.loss
        elif all("accuracy" in u.metrics for u in updates):  # the workers' view of the model they trained from
            entry["accuracy"] = sum(float(u.metrics["accuracy"]) * u.num_samples for u in updates) / samples
        self.history.append(entry)
        self.history = self.history[-HISTORY:]
        checkpoints.save(
            self.checkpoint_dir, checkpoints.Checkpoint(self.rounds.round, self.weights, self.history, self.counters)
        )
        log.info("round %d closed: %s", self.rounds.round, entry)

    def _finish(self) -> Outcome:
        self._publish(final=True)
        metrics = {
            k: float(v) for k, v in (self.history[-1] if self.history else {}).items() if k in ("accuracy", "loss")
        }
        self._report("completed", metrics=metrics)
        return Outcome(True, self.rounds.round, metrics=metrics)
