"""Retry delays: exponential growth, full jitter, a cap. Pure: randomness is passed in, nothing sleeps."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(
    *,
    initial: float = 0.5,
    factor: float = 2.0,
    cap: float = 30.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield an endless series of delays in seconds.

    Each delay is drawn uniformly from ``[0, min(cap, initial * factor**n)]`` ("full jitter"), so a fleet of
    edges that lost the cloud at the same moment spreads its reconnects instead of arriving as one storm.
    Restart the generator after a success to start again from ``initial``.
    """
    if initial <= 0 or factor < 1 or cap < initial:
        raise ValueError(f"backoff needs initial > 0, factor >= 1, cap >= initial (got {initial}, {factor}, {cap})")
    draw = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not cryptography
    ceiling = initial
    while True:
        yield draw.uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * factor)
