"""A token bucket: ``rate`` tokens a second on average, bursts of up to ``burst``. Pure: time is an argument.

It is client-go's client-side limiter (``kubeAPIConfig.qps`` and ``burst``, a token a request) and a stream's
byte budget (a token a byte): a caller reserves tokens and is told how long to wait before using them.
Reservations queue up in order, so waiting callers are served FIFO and the long-run rate never exceeds ``rate``.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def try_take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if they are there now; False (and nothing taken) if not."""
        self._refill(now)
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._at = max(self._at, now)

    def reserve(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens (bytes, for a byte rate); the seconds to wait before acting on them."""
        self._refill(now)
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
