"""The kubelet's events (Pulled, Created, Started, Killing, BackOff, FailedMount, …), sent up through the
outbox so that ``kubectl describe pod`` tells what happened at the edge, also while it was offline.

Like client-go's event correlator: repeats of one (object, reason, message) are one Event whose count goes
up (the outbox keeps only its newest count, so a repeat while offline costs nothing), and each object has a
budget (a burst of 25, then one per five minutes) so a crash-looping pod cannot flood the cloud. While offline
at most ``backlog`` distinct events wait; beyond that new ones are dropped and counted, never unbounded.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from common import upstream
from common.logging import get_logger
from common.protocol.ratelimit import TokenBucket
from common.upstream import Involved, UpstreamPublisher

log = get_logger(__name__)

BURST = 25  # client-go's spam filter: per object, 25 at once
REFILL_PER_S = 1 / 300  # then one every 5 minutes
REMEMBERED = 4096  # (object, reason, message) keys whose counts are kept


def _timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self,
        *,
        node: str,
        publish: UpstreamPublisher,
        pending: Callable[[], int],
        backlog: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node
        self._publish = publish
        self._pending = pending  # events waiting in the outbox
        self._backlog = backlog
        self._clock = clock
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key → (count, first seen)
        self._budgets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.recorded = 0
        self.dropped = 0  # over the backlog while offline
        self.throttled = 0  # over an object's budget

    async def pod(self, pod: dict[str, Any], type_: str, reason: str, message: str, *, container: str = "") -> None:
        m = pod["metadata"]
        involved = Involved(
            "Pod",
            m["name"],
            m["uid"],
            m.get("namespace", "default"),
            f"spec.containers{{{container}}}" if container else "",
        )
        await self.record(involved, type_, reason, message)

    async def node(self, uid: str, type_: str, reason: str, message: str) -> None:
        await self.record(Involved("Node", self._node, uid or self._node), type_, reason, message)

    async def record(self, involved: Involved, type_: str, reason: str, message: str) -> None:
        now = self._clock()
        name = upstream.event_name(involved, reason, message[: upstream.MAX_EVENT_MESSAGE])
        count, first = self._seen.pop(name, (0, now))
        self._seen[name] = (count + 1, first)  # counted even when not sent now: the next one carries it
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        budget = self._budgets.pop(involved.uid, None) or TokenBucket(rate=REFILL_PER_S, burst=BURST, now=now)
        self._budgets[involved.uid] = budget
        while len(self._budgets) > REMEMBERED:
            self._budgets.popitem(last=False)
        if not budget.try_take(now):
            self.throttled += 1
            return
        if count == 0 and self._pending() >= self._backlog:  # a repeat replaces its own waiting entry
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("events_dropped", dropped=self.dropped, backlog=self._backlog)
            return
        event = upstream.event(
            involved,
            reason=reason,
            message=message,
            type_=type_,
            count=count + 1,
            first_timestamp=_timestamp(first),
            last_timestamp=_timestamp(now),
            host=self._node,
        )
        try:
            await self._publish(event)
        except Exception:  # an event is never worth failing the pod's sync over
            log.exception("event_not_recorded", reason=reason)
            return
        self.recorded += 1
