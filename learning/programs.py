"""What the worker and aggregator images run: ``python -m learning.trainer`` and ``python -m learning.aggregator``,
configured by the environment the global manager gives the pods (Sedna's names where Sedna has them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from learning import data as datasets
from learning import weights as blobs
from learning.aggregation import get_aggregation
from learning.client import LCClient
from learning.estimator import MLP, Metrics, Weights
from learning.rounds import RoundPolicy
from learning.server import AggregationServer
from learning.worker import FederatedLearning

TERMINATION_LOG = Path("/dev/termination-log")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, os.environ.get(name.lower(), default))


def _sizes() -> tuple[int, ...]:
    return tuple(int(s) for s in _env("MODEL_SIZES", "64,32,10").split(","))


def _model() -> MLP:
    return MLP(
        _sizes(),
        lr=float(_env("LEARNING_RATE", "0.1")),
        batch_size=int(_env("BATCH_SIZE", "10")),
        seed=int(_env("SEED", "0")),
    )


def _client() -> LCClient:
    return LCClient(
        _env("LC_SERVER", "http://localhost:9100"),
        namespace=_env("NAMESPACE", "default"),
        job=_env("JOB_NAME"),
        worker=_env("WORKER_NAME"),
    )


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)


def trainer() -> int:
    _logging()
    train = datasets.load_csv(_env("TRAIN_DATASET_URL"))
    fraction = float(_env("VALID_FRACTION", "0"))
    valid = None
    if fraction > 0:
        train, valid = datasets.split(train, fraction, seed=int(_env("SEED", "0")))
    worker = FederatedLearning(_model(), _env("AGG_ALGORITHM", "FedAvg"), lc=_client())
    result = worker.train(train, valid, epochs=int(_env("EPOCHS", "1")))
    logging.getLogger("learning.trainer").info("done after %d updates: %s", result.rounds, result.metrics)
    return 0


def aggregator() -> int:
    _logging()
    participants = int(_env("PARTICIPANTS_COUNT", "1"))
    target = _env("TARGET_ACCURACY")
    policy = RoundPolicy(
        rounds=int(_env("ROUNDS", _env("EXIT_ROUND", "30"))),
        participants=participants,
        min_workers=int(_env("MIN_TRAINING_WORKERS", str(participants))),
        round_timeout_s=float(_env("ROUND_TIMEOUT_SECONDS", "60")),
        retries=int(_env("ROUND_RETRIES", "2")),
        target_accuracy=float(target) if target else None,
    )
    evaluate = None
    if eval_url := _env("EVAL_DATASET_URL"):
        test = datasets.load_csv(eval_url)
        probe = _model()

        def evaluate(weights: Weights) -> Metrics:
            probe.set_weights(weights)
            return probe.evaluate(*test)

    model_url = Path(_env("MODEL_URL", "/model/model.kfl"))
    server = AggregationServer(
        get_aggregation(_env("AGG_ALGORITHM", "FedAvg"), json.loads(_env("AGG_PARAMETERS", "{}"))),
        policy,
        lc=_client(),
        initial_weights=_model().get_weights(),
        checkpoint_dir=Path(_env("CHECKPOINT_DIR", str(model_url.parent / "checkpoint"))),
        evaluate=evaluate,
        elastic=_env("ELASTIC_WORKERS") == "true",
    )
    outcome = server.run()
    if outcome.succeeded:
        model_url.parent.mkdir(parents=True, exist_ok=True)
        tmp = model_url.with_name(model_url.name + ".tmp")
        tmp.write_bytes(blobs.encode(server.weights, {"kind": "model", "round": outcome.round, "final": True}))
        tmp.replace(model_url)
    summary = {
        "phase": "Succeeded" if outcome.succeeded else "Failed",
        "round": outcome.round,
        "reason": outcome.reason,
        "message": outcome.message,
        "metrics": outcome.metrics,
    }
    with contextlib.suppress(OSError):  # not in a pod
        TERMINATION_LOG.write_text(json.dumps(summary))
    print(json.dumps(summary), flush=True)
    return 0


def datawait() -> int:
    """The init container: wait until the node's local controller has the whole Dataset, copy it into the
    pod's data directory, check its sha256, exit. Training starts only on complete data.

    ``DATASET_NAME`` names the Dataset; an operator's worker, which may land on any of the job's data nodes,
    gets ``DATASET_NAMES`` instead and takes the one bound to its node, copied to ``DATA_FILE``."""
    _logging()
    log = logging.getLogger("learning.datawait")
    lc = _client()
    names = [n for n in _env("DATASET_NAMES", _env("DATASET_NAME")).split(",") if n]
    target = Path(_env("DATA_DIR", "/data"))
    last = ""
    while True:
        statuses = {n: lc.dataset(n) for n in names}
        here = names if len(names) == 1 else [n for n, s in statuses.items() if s.get("here")]
        name = here[0] if here else ""
        status = statuses.get(name, {})
        if status.get("phase") == "Ready":
            break
        line = (
            f"dataset {name}: {status.get('phase') or 'unknown'} {status.get('message', '')}".strip()
            if name
            else f"none of the datasets {', '.join(names)} is bound to this node yet"
        )
        if line != last:
            log.info(line)
            last = line
        time.sleep(1)
    body, sha = lc.dataset_bytes(name)
    if sha and hashlib.sha256(body).hexdigest() != sha:
        log.error("dataset %s: the copy's sha256 does not match %s", name, sha)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    out = target / (_env("DATA_FILE") or str(status.get("file") or name))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(out)
    log.info(
        "dataset %s ready: %d bytes, %s samples, sha256 %s, at %s",
        name,
        len(body),
        status.get("numberOfSamples"),
        sha,
        out,
    )
    return 0
