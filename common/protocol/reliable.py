"""Reliable delivery inside one session: sequence numbers, a window, cumulative acks, retransmit deadlines.

``ReliableSender`` numbers messages 1, 2, 3, … per session and keeps at most ``window`` unacknowledged. Work is
keyed (an object UID, an outbox key): a key marked while it is already in flight waits until that flight is
acked, so one key's versions never overtake each other, and many marks of one key cost one message.
``ReliableReceiver`` tells new messages from duplicates and computes the cumulative ack: the highest ``n`` such
that 1..n have all been committed by the application.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

DEFAULT_WINDOW = 64
# TCP already retransmits inside a live connection; ours only covers a peer that received but never
# committed (a failed write, say), so the first retry can wait a while.
DEFAULT_RETRANSMIT_AFTER = 5.0
DEFAULT_RETRANSMIT_MAX = 60.0


@dataclass(slots=True)
class InFlight(Generic[K, P]):
    seq: int
    key: K
    payload: P
    deadline: float
    attempts: int = 1


class ReliableSender(Generic[K, P]):
    __slots__ = (
        "_inflight",
        "_inflight_keys",
        "_next_seq",
        "_pending",
        "_retransmit_after",
        "_retransmit_max",
        "retransmits",
        "window",
    )

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        retransmit_after: float = DEFAULT_RETRANSMIT_AFTER,
        retransmit_max: float = DEFAULT_RETRANSMIT_MAX,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._retransmit_after = retransmit_after
        self._retransmit_max = retransmit_max
        self._next_seq = 1
        self._pending: dict[K, None] = {}  # insertion-ordered set of keys with work to do
        self._inflight: dict[int, InFlight[K, P]] = {}  # by seq, ascending
        self._inflight_keys: dict[K, int] = {}
        self.retransmits = 0

    def mark(self, key: K) -> None:
        """``key`` has (new) work; it will be produced afresh when a window slot is free."""
        self._pending[key] = None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def idle(self) -> bool:
        return not self._pending and not self._inflight

    def poll(self, now: float, produce: Callable[[K, int], P | None]) -> list[InFlight[K, P]]:
        """What to send now: due retransmits first, then new messages while the window has room.

        ``produce(key, seq)`` builds the current payload for ``key`` numbered ``seq``, or returns ``None`` if
        the key needs nothing any more (then ``seq`` is not used).
        """
        out: list[InFlight[K, P]] = []
        for flight in self._inflight.values():
            if flight.deadline <= now:
                flight.attempts += 1
                backoff = self._retransmit_after * 2 ** (flight.attempts - 1)
                flight.deadline = now + min(self._retransmit_max, backoff)
                self.retransmits += 1
                out.append(flight)
        room = self.window - len(self._inflight)
        while room > 0 and self._pending:
            # One flight per key: a key already in flight keeps its place and goes after the ack.
            taken = self._first_sendable(room)
            if not taken:
                break
            for key in taken:
                del self._pending[key]
                seq = self._next_seq
                payload = produce(key, seq)
                if payload is None:
                    continue
                self._next_seq += 1
                flight = InFlight(seq, key, payload, now + self._retransmit_after)
                self._inflight[seq] = flight
                self._inflight_keys[key] = seq
                out.append(flight)
                room -= 1
        return out

    def _first_sendable(self, limit: int) -> list[K]:
        taken: list[K] = []
        for key in self._pending:
            if key not in self._inflight_keys:
                taken.append(key)
                if len(taken) == limit:
                    break
        return taken

    def on_ack(self, ack: int) -> list[InFlight[K, P]]:
        """Everything up to ``ack`` is durably applied by the peer. Returns the flights that ended."""
        done: list[InFlight[K, P]] = []
        while self._inflight:
            seq = next(iter(self._inflight))
            if seq > ack:
                break
            flight = self._inflight.pop(seq)
            del self._inflight_keys[flight.key]
            done.append(flight)
        return done

    def inflight_keys(self) -> list[K]:
        return [f.key for f in self._inflight.values()]

    def next_deadline(self) -> float | None:
        return min((f.deadline for f in self._inflight.values()), default=None)


class ReliableReceiver:
    __slots__ = ("_ack_sent", "_applying", "_committed_ahead", "_contiguous")

    def __init__(self) -> None:
        self._contiguous = 0  # 1.._contiguous are committed
        self._committed_ahead: set[int] = set()  # committed, but after a gap
        self._applying: set[int] = set()  # accepted, not yet committed
        self._ack_sent = 0

    def accept(self, seq: int) -> bool:
        """True: a new message, apply it. False: a duplicate, drop it (its ack is or will be covered)."""
        if seq <= self._contiguous or seq in self._committed_ahead or seq in self._applying:
            return False
        self._applying.add(seq)
        return True

    def committed(self, seq: int) -> None:
        """The application durably applied ``seq``."""
        self._applying.discard(seq)
        if seq != self._contiguous + 1:
            if seq > self._contiguous:
                self._committed_ahead.add(seq)
            return
        self._contiguous = seq
        while self._contiguous + 1 in self._committed_ahead:
            self._contiguous += 1
            self._committed_ahead.discard(self._contiguous)

    @property
    def ack(self) -> int:
        return self._contiguous

    def ack_due(self) -> bool:
        return self._contiguous > self._ack_sent

    def ack_sent(self) -> int:
        self._ack_sent = self._contiguous
        return self._contiguous
