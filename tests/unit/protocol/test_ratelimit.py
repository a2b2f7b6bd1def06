"""The API client's token bucket (kubeAPIConfig.qps and burst): time is an argument, nothing sleeps."""

from __future__ import annotations

import pytest

from common.protocol.ratelimit import TokenBucket


def test_a_burst_goes_at_once_then_requests_are_spaced_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    waits = [bucket.reserve(0.0) for _ in range(3)]  # queued behind each other, 0.1 s apart
    assert waits == pytest.approx([0.1, 0.2, 0.3])


def test_idle_time_refills_the_bucket_up_to_the_burst_only() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.reserve(100.0) == 0.0  # long idle: full again, but no fuller than burst
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) == pytest.approx(0.5)


def test_the_long_run_rate_never_exceeds_the_limit() -> None:
    bucket = TokenBucket(rate=5, burst=5, now=0.0)
    now, started = 0.0, []
    for _ in range(100):
        now += bucket.reserve(now)  # each caller waits as told, then acts
        started.append(now)
    assert started[-1] >= (100 - 5) / 5 - 1e-9


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_a_bucket_that_could_never_grant_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="token bucket needs"):
        TokenBucket(rate=rate, burst=burst, now=0.0)


def test_try_take_grants_from_what_is_there_and_takes_nothing_when_it_refuses() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(3)] == [True, True, False]
    assert not bucket.try_take(0.5)  # half a token: still refused, and the half is kept
    assert bucket.try_take(1.0)
