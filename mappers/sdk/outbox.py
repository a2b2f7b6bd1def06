"""What waits for the broker: the latest message per topic, so a broker outage costs memory per device, not per
reading. Device tasks put; the MQTT writer takes while connected and gives back what it could not deliver.

Twin updates to one topic merge property by property (a report of ``temperature`` does not erase a pending
report of ``humidity``); any other topic keeps only its newest payload (the latest state is the state).
"""

from __future__ import annotations

import asyncio
from typing import Any

from common.logging import get_logger

log = get_logger(__name__)

Payload = dict[str, Any]


class Outbox:
    def __init__(self, *, max_topics: int = 10_000) -> None:
        self._pending: dict[str, Payload] = {}
        self._ready = asyncio.Event()
        self._max_topics = max_topics
        self.dropped = 0  # topics evicted because the outbox was full; only while the broker is away this long

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, topic: str, payload: Payload) -> None:
        """Queue a message; a pending one for the same topic is replaced (twins: merged, newer values win)."""
        older = self._pending.pop(topic, None)
        if older is not None:
            payload = _merge(older, payload)
        elif len(self._pending) >= self._max_topics:
            evicted = next(iter(self._pending))
            del self._pending[evicted]
            self.dropped += 1
            log.warning("outbox_full", evicted=evicted, max_topics=self._max_topics, dropped=self.dropped)
        self._pending[topic] = payload
        self._ready.set()

    def give_back(self, topic: str, payload: Payload) -> None:
        """Return a message whose delivery failed; whatever was queued for its topic since then stays newer."""
        newer = self._pending.pop(topic, None)
        self._pending[topic] = payload if newer is None else _merge(payload, newer)
        self._ready.set()

    def discard(self, prefix: str) -> None:
        """Forget everything pending under a topic prefix (a device that left the node)."""
        for topic in [t for t in self._pending if t.startswith(prefix)]:
            del self._pending[topic]

    async def get(self) -> tuple[str, Payload]:
        """The oldest pending message, waiting for one."""
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        topic = next(iter(self._pending))
        return topic, self._pending.pop(topic)


def _merge(older: Payload, newer: Payload) -> Payload:
    old_twin, new_twin = older.get("twin"), newer.get("twin")
    if isinstance(old_twin, dict) and isinstance(new_twin, dict):
        return {**newer, "twin": {**old_twin, **new_twin}}
    return newer
