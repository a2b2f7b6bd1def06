"""Edge → cloud: an outbox coalesced by key, drained with acks, in order per key.

Only the latest value of a key matters (a pod's newest status, a device property's newest reading), so
``put`` replaces a pending value instead of queueing behind it. A value already in flight stays in flight;
a newer one put meanwhile goes after its ack. This class is the in-memory mirror of EdgeCore's durable
outbox table: the I/O layer writes a value before ``put`` and deletes it when ``on_ack`` reports it delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.messages import Message, new_message
from common.protocol.reliable import DEFAULT_WINDOW, ReliableSender


@dataclass(frozen=True, slots=True)
class OutboxItem:
    key: str
    version: int  # increases with every put of the key; the durable row carries it too
    group: str
    operation: str
    resource: str
    content: Any


class Outbox:
    def __init__(self, *, source: str = "edgehub", window: int = DEFAULT_WINDOW) -> None:
        self._source = source
        self._window = window
        self._items: dict[str, OutboxItem] = {}
        self._last_version = 0
        self._sender: ReliableSender[str, tuple[OutboxItem, Message]] | None = None

    def load(self, items: Iterable[OutboxItem]) -> None:
        """Restore what the durable outbox held at startup."""
        for item in items:
            self._items[item.key] = item
            self._last_version = max(self._last_version, item.version)

    def next_version(self) -> int:
        self._last_version += 1
        return self._last_version

    def put(self, item: OutboxItem) -> None:
        current = self._items.get(item.key)
        if current is not None and current.version > item.version:
            return
        self._items[item.key] = item
        if self._sender is not None:
            self._sender.mark(item.key)

    def __len__(self) -> int:
        return len(self._items)

    def count(self, prefix: str) -> int:
        """Items whose key starts with ``prefix``."""
        return sum(1 for key in self._items if key.startswith(prefix))

    def start_session(self) -> None:
        """Connected: everything held goes out again (the cloud's acks of an earlier session are not known)."""
        self._sender = ReliableSender(window=self._window)
        for key in self._items:
            self._sender.mark(key)

    def end_session(self) -> None:
        self._sender = None

    def poll(self, now: float, now_ms: int) -> list[Message]:
        if self._sender is None:
            return []

        def produce(key: str, seq: int) -> tuple[OutboxItem, Message] | None:
            item = self._items.get(key)
            if item is None:
                return None
            message = new_message(
                source=self._source,
                group=item.group,
                operation=item.operation,
                resource=item.resource,
                content=item.content,
                now_ms=now_ms,
                seq=seq,
            )
            return item, message

        return [flight.payload[1] for flight in self._sender.poll(now, produce)]

    def on_ack(self, ack: int) -> list[OutboxItem]:
        """The cloud has handled everything up to ``ack``. Returns the delivered items (to delete durably)."""
        if self._sender is None:
            return []
        delivered = []
        for flight in self._sender.on_ack(ack):
            item = flight.payload[0]
            delivered.append(item)
            if self._items.get(item.key) is item:
                del self._items[item.key]  # nothing newer was put meanwhile
        return delivered

    def next_deadline(self) -> float | None:
        return self._sender.next_deadline() if self._sender is not None else None

    def idle(self) -> bool:
        return self._sender is None or self._sender.idle()
