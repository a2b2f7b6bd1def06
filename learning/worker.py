"""``FederatedLearning``: a training worker's loop, in Sedna's shape.

Wait for the global model of a version newer than the last one trained on; train the local epochs on it
(with FedProx's proximal term when the aggregation asks for one); send the update; repeat until a model comes
marked final. An update not followed by a newer model within ``resend_s`` is sent again (the global manager
carries an update it already delivered only once, and answers it with the newest model if there is one; the
aggregator drops duplicates), so a lost message, a restarted CloudCore or a disconnected node only delays. A
worker that restarts starts by joining: the node's local controller hands it the latest model, and it takes
part from the current round on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from learning import weights as blobs
from learning.aggregation import Aggregation, get_aggregation
from learning.client import LCClient
from learning.data import Data
from learning.estimator import Estimator

log = logging.getLogger("learning.worker")


@dataclass(frozen=True)
class Result:
    rounds: int  # updates this worker sent
    final_round: int
    metrics: dict[str, float]


class FederatedLearning:
    def __init__(
        self,
        estimator: Estimator,
        aggregation: str | Aggregation = "FedAvg",
        *,
        lc: LCClient | None = None,
        resend_s: float = 3.0,
        poll_s: float = 5.0,
    ) -> None:
        self.estimator = estimator
        self.aggregation = get_aggregation(aggregation) if isinstance(aggregation, str) else aggregation
        self.lc = lc or LCClient(
            os.environ.get("LC_SERVER", "http://localhost:9100"),
            namespace=os.environ.get("NAMESPACE", "default"),
            job=os.environ["JOB_NAME"],
            worker=os.environ["WORKER_NAME"],
        )
        self.resend_s = resend_s
        self.poll_s = poll_s

    def train(self, train_data: Data, valid_data: Data | None = None, *, epochs: int = 1) -> Result:
        x, y = train_data
        self.lc.join()
        self.lc.report("train", "running", {"currentRound": 0, "sampleCount": len(y)})
        last, sent, pending, sent_at = -1, 0, b"", 0.0
        while True:
            blob = self.lc.wait_model(after=last, wait=self.poll_s)
            if blob is None:
                if pending and time.monotonic() - sent_at >= self.resend_s:
                    self.lc.put_update(pending, last)
                    sent_at = time.monotonic()
                elif not pending and time.monotonic() - sent_at >= self.resend_s:
                    self.lc.join()  # no model yet: ask again that the latest one be brought here
                    sent_at = time.monotonic()
                continue
            weights, meta = blobs.decode(blob)
            version = int(meta["round"])
            self.estimator.set_weights(weights)
            metrics: dict[str, float] = {}
            if valid_data is not None and len(valid_data[1]):
                m = self.estimator.evaluate(*valid_data)
                metrics = {"accuracy": m.accuracy, "loss": m.loss}
            if meta.get("final"):
                log.info("final model of round %d received", version)
                self.lc.report(
                    "train", "completed", {"currentRound": version, "sampleCount": len(y), "metrics": metrics}
                )
                return Result(sent, version, metrics)
            mu = float(meta.get("mu") or 0.0)
            started = time.monotonic()
            loss = self.estimator.train(
                x, y, epochs=int(meta.get("epochs") or epochs), prox=(weights, mu) if mu > 0 else None
            )
            update: dict[str, Any] = {
                "kind": "update",
                "worker": self.lc.worker,
                "round": version,
                "num_samples": len(y),
                "metrics": {**metrics, "train_loss": loss, "train_seconds": time.monotonic() - started},
            }
            pending = blobs.encode(self.estimator.get_weights(), update)
            self.lc.put_update(pending, version)
            sent_at, last, sent = time.monotonic(), version, sent + 1
            log.info("round %d: trained on %d samples, loss %.4f", version + 1, len(y), loss)
            self.lc.report("train", "running", {"currentRound": version + 1, "sampleCount": len(y)})
