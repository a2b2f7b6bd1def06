"""The learning lib without I/O: aggregation math, the round protocol, the weights codec, the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learning import checkpoint as checkpoints
from learning import data
from learning import weights as blobs
from learning.aggregation import AggregationError, FedAvg, FedProx, get_aggregation, weighted_mean
from learning.estimator import MLP
from learning.rounds import Decision, RoundPolicy, Rounds, Update, Verdict


def _w(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float32), np.array([[values[0]]], dtype=np.float32)]


def test_fedavg_weighs_each_worker_by_its_samples() -> None:
    merged = FedAvg().aggregate([(_w(1.0, 2.0), 1), (_w(4.0, 8.0), 3)])
    assert merged[0].tolist() == pytest.approx([3.25, 6.5])
    assert merged[1].tolist() == [[pytest.approx(3.25)]]
    assert merged[0].dtype == np.float32


def test_identical_updates_average_to_themselves_in_any_order() -> None:
    rng = np.random.default_rng(1)
    updates = [([rng.standard_normal((3, 4)).astype(np.float32)], int(n)) for n in (5, 1, 9)]
    forward = weighted_mean(updates)[0]
    backward = weighted_mean(list(reversed(updates)))[0]
    assert np.array_equal(forward, backward)
    same = weighted_mean([(updates[0][0], 2), (updates[0][0], 7)])[0]
    assert np.allclose(same, updates[0][0][0], atol=1e-7)


def test_updates_of_other_shapes_are_refused() -> None:
    with pytest.raises(AggregationError, match="disagree"):
        weighted_mean([(_w(1.0, 2.0), 1), ([np.zeros(3, dtype=np.float32)], 1)])
    with pytest.raises(AggregationError, match="no updates"):
        weighted_mean([])


def test_fedavg_of_one_full_batch_epoch_is_one_centralized_gradient_step() -> None:
    """FedSGD equivalence: the sample-weighted mean of per-shard mean gradients is the global mean gradient."""
    (x, y), _ = data.digits()
    x, y = x[:400], y[:400]
    shards = data.shards((x, y), 4, iid=True)
    start = MLP(seed=3).get_weights()
    central = MLP(lr=0.5, batch_size=len(y))
    central.set_weights(start)
    central.train(x, y, epochs=1)
    updates = []
    for sx, sy in shards:
        local = MLP(lr=0.5, batch_size=len(sy))
        local.set_weights(start)
        local.train(sx, sy, epochs=1)
        updates.append((local.get_weights(), len(sy)))
    merged = FedAvg().aggregate(updates)
    assert max(float(np.abs(a - b).max()) for a, b in zip(merged, central.get_weights(), strict=True)) < 1e-6


def test_fedprox_pulls_local_training_towards_the_global_model() -> None:
    (x, y), _ = data.digits()
    shard = data.shards((x, y), 4, iid=False)[0]
    start = MLP(seed=0).get_weights()
    drift = {}
    for mu in (0.0, 1.0):
        model = MLP(seed=0)
        model.set_weights(start)
        model.train(*shard, epochs=3, prox=(start, mu) if mu else None)
        drift[mu] = sum(float(np.square(a - b).sum()) for a, b in zip(model.get_weights(), start, strict=True))
    assert drift[1.0] < drift[0.0]
    assert get_aggregation("FedProx", {"mu": 0.5}) == FedProx(mu=0.5)
    with pytest.raises(AggregationError, match="unknown aggregation"):
        get_aggregation("FedMagic")


def test_non_iid_shards_see_few_classes_and_cover_every_sample_once() -> None:
    train, _ = data.digits()
    shards = data.shards(train, 4, iid=False)
    assert sum(len(s[1]) for s in shards) == len(train[1])
    assert all(len(set(s[1].tolist())) <= 6 for s in shards)
    assert all(len(set(s[1].tolist())) == 10 for s in data.shards(train, 4, iid=True))


# --- the round protocol --------------------------------------------------------------------------------------


def _update(worker: str, round_: int, samples: int = 10) -> Update:
    return Update(worker, round_, samples, _w(1.0, 1.0))


def test_a_round_closes_as_soon_as_every_worker_reported() -> None:
    rounds = Rounds(RoundPolicy(rounds=2, participants=2, min_workers=1, round_timeout_s=10), now=0)
    assert rounds.offer(_update("a", 0)) is Verdict.ACCEPTED
    assert rounds.decide(1) is Decision.WAIT
    assert rounds.offer(_update("b", 0)) is Verdict.ACCEPTED
    assert rounds.decide(1) is Decision.CLOSE
    assert [u.worker for u in rounds.close(1)] == ["a", "b"]
    assert rounds.round == 1
    assert rounds.deadline == 11


def test_at_the_deadline_the_quorum_closes_the_round() -> None:
    rounds = Rounds(RoundPolicy(rounds=5, participants=4, min_workers=3, round_timeout_s=10), now=0)
    for worker in "abc":
        rounds.offer(_update(worker, 0))
    assert rounds.decide(9.9) is Decision.WAIT
    assert rounds.decide(10) is Decision.CLOSE


def test_below_the_quorum_the_round_is_retried_then_fails() -> None:
    rounds = Rounds(RoundPolicy(rounds=5, participants=3, min_workers=2, round_timeout_s=10, retries=2), now=0)
    rounds.offer(_update("a", 0))
    assert rounds.decide(10) is Decision.RETRY
    rounds.retry(10)
    assert rounds.decide(15) is Decision.WAIT
    assert rounds.decide(20) is Decision.RETRY
    rounds.retry(20)
    assert rounds.decide(30) is Decision.FAIL
    assert "1 of the 2 updates its quorum needs" in rounds.failure_message()


def test_a_retried_round_keeps_what_it_received() -> None:
    rounds = Rounds(RoundPolicy(rounds=5, participants=3, min_workers=2, round_timeout_s=10), now=0)
    rounds.offer(_update("a", 0))
    rounds.retry(10)
    rounds.offer(_update("b", 0))
    assert rounds.decide(20) is Decision.CLOSE


def test_stale_duplicate_and_empty_updates_are_dropped_and_counted() -> None:
    rounds = Rounds(RoundPolicy(rounds=5, participants=2, min_workers=1, round_timeout_s=10), round_=3, now=0)
    assert rounds.offer(_update("a", 2)) is Verdict.STALE
    assert rounds.offer(_update("a", 3)) is Verdict.ACCEPTED
    assert rounds.offer(_update("a", 3)) is Verdict.DUPLICATE
    assert rounds.offer(_update("b", 3, samples=0)) is Verdict.EMPTY
    assert (rounds.stale, rounds.duplicate, len(rounds.received)) == (1, 1, 1)


def test_a_policy_that_cannot_work_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="minTrainingWorkers must be 1 to 4"):
        RoundPolicy(participants=4, min_workers=5)
    with pytest.raises(ValueError, match="roundTimeoutSeconds"):
        RoundPolicy(round_timeout_s=0)


# --- codec and checkpoint ------------------------------------------------------------------------------------


def test_a_blob_round_trips_and_its_size_is_the_raw_float32_size() -> None:
    weights = MLP().get_weights()
    blob = blobs.encode(weights, {"kind": "update", "round": 4})
    back, meta = blobs.decode(blob, sha256=blobs.digest(blob))
    assert meta == {"kind": "update", "round": 4}
    assert all(np.array_equal(a, b) for a, b in zip(weights, back, strict=True))
    assert len(blob) - 4 * 2410 < 200  # 2,410 float32 parameters plus a small header


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "truncated|after its arrays"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:8] + b"!" + b[9:], "malformed"),
        (lambda b: b + b"\0\0\0\0", "after its arrays"),
    ],
)
def test_damaged_blobs_are_refused_naming_the_damage(damage: object, message: str) -> None:
    blob = blobs.encode(MLP().get_weights(), {"round": 0})
    with pytest.raises(blobs.BlobError, match=message):
        blobs.decode(damage(blob))  # type: ignore[operator]


def test_a_checksum_mismatch_is_refused() -> None:
    blob = blobs.encode(MLP().get_weights(), {"round": 0})
    with pytest.raises(blobs.BlobError, match="checksum mismatch"):
        blobs.decode(blob, sha256="0" * 64)


def test_a_checkpoint_restores_round_weights_and_history(tmp_path: Path) -> None:
    assert checkpoints.load(tmp_path) is None
    weights = MLP(seed=5).get_weights()
    checkpoints.save(tmp_path, checkpoints.Checkpoint(7, weights, [{"round": 7, "accuracy": 0.5}], {"stale": 2}))
    back = checkpoints.load(tmp_path)
    assert back is not None
    assert (back.round, back.history, back.counters) == (7, [{"round": 7, "accuracy": 0.5}], {"stale": 2})
    assert all(np.array_equal(a, b) for a, b in zip(weights, back.weights, strict=True))
    assert list(tmp_path.iterdir()) == [tmp_path / checkpoints.NAME]  # no temporary file left behind


def test_a_scikit_learn_model_takes_part_through_the_adapter() -> None:
    import warnings  # noqa: PLC0415

    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    from learning.estimator import SklearnEstimator  # noqa: PLC0415

    (x, y), (tx, ty) = data.digits()
    shards = data.shards((x, y), 2, iid=True)
    model = {"hidden_layer_sizes": (32,), "learning_rate_init": 0.01, "batch_size": 10}
    workers = [SklearnEstimator(MLPClassifier(**model, random_state=i), np.arange(10)) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for worker, shard in zip(workers, shards, strict=True):
            worker.train(*shard, epochs=1)  # scikit-learn makes its arrays on the first fit
        for worker in workers:
            worker.set_weights(workers[0].get_weights())  # one global model to start from, as in FedAvg
        for _ in range(5):
            for worker, shard in zip(workers, shards, strict=True):
                worker.train(*shard, epochs=2)
            merged = FedAvg().aggregate([(w.get_weights(), len(s[1])) for w, s in zip(workers, shards, strict=True)])
            for worker in workers:
                worker.set_weights(merged)
    assert [w.shape for w in merged] == [(64, 32), (32,), (32, 10), (10,)]
    assert workers[0].evaluate(tx, ty).accuracy > 0.8
    with pytest.raises(ValueError, match="does not support FedProx"):
        workers[0].train(x, y, epochs=1, prox=(merged, 0.1))


def test_an_elastic_round_expects_the_workers_there_are_but_never_fewer_than_the_quorum() -> None:
    rounds = Rounds(RoundPolicy(rounds=5, participants=3, min_workers=2, round_timeout_s=10), now=0)
    rounds.expect(4)  # a worker added
    for worker in "abc":
        rounds.offer(_update(worker, 0))
    assert rounds.decide(1) is Decision.WAIT
    rounds.expect(3)  # one removed: the three that reported are everyone
    assert rounds.decide(1) is Decision.CLOSE
    rounds.close(1)
    rounds.expect(1)  # below the quorum: one update does not close a round early
    rounds.offer(_update("a", 1))
    assert rounds.expected == 2
    assert rounds.decide(2) is Decision.WAIT
