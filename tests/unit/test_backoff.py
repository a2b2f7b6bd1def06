from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.protocol.backoff import backoff_delays


@given(
    initial=st.floats(0.01, 5),
    factor=st.floats(1, 4),
    cap=st.floats(5, 120),
    seed=st.integers(0, 2**32),
)
def test_delays_stay_within_the_growing_ceiling_and_the_cap(
    initial: float, factor: float, cap: float, seed: int
) -> None:
    delays = list(
        itertools.islice(backoff_delays(initial=initial, factor=factor, cap=cap, rng=random.Random(seed)), 40)
    )
    ceiling = initial
    for delay in delays:
        assert 0.0 <= delay <= ceiling + 1e-9
        assert delay <= cap + 1e-9
        ceiling = min(cap, ceiling * factor)


def test_full_jitter_spreads_a_fleet() -> None:
    """A thousand edges that lost the cloud together do not come back in one instant."""
    tenth = [list(itertools.islice(backoff_delays(rng=random.Random(i)), 10))[-1] for i in range(1000)]
    assert max(tenth) - min(tenth) > 20  # spread over most of the 30 s cap
    assert len({round(d, 3) for d in tenth}) > 900


def test_same_seed_same_series() -> None:
    a = list(itertools.islice(backoff_delays(rng=random.Random(7)), 5))
    b = list(itertools.islice(backoff_delays(rng=random.Random(7)), 5))
    assert a == b


@pytest.mark.parametrize(("initial", "factor", "cap"), [(0, 2, 10), (1, 0.5, 10), (5, 2, 1)])
def test_bad_parameters_are_refused(initial: float, factor: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(backoff_delays(initial=initial, factor=factor, cap=cap))
