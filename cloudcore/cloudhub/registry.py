"""Which link serves which node: at most one per node, and never more than the node limit. Pure.

A newcomer ``claim``s its node before anything is awaited, so of many connections of one node arriving at
once each replaces the one before it and exactly one is left serving; the replaced ones learn it from
``is_current`` and stop. ``release`` forgets a link only while it is still the node's current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from common.messages import NodeName

LinkT = TypeVar("LinkT")
SessionT = TypeVar("SessionT")


@dataclass
class Entry(Generic[LinkT, SessionT]):
    link: LinkT
    session: SessionT
    ready: bool = False


@dataclass
class SessionRegistry(Generic[LinkT, SessionT]):
    node_limit: int
    _entries: dict[NodeName, Entry[LinkT, SessionT]] = field(default_factory=dict)

    def full_for(self, node: NodeName) -> bool:
        """A new node would exceed the limit (a node already here may always replace its own link)."""
        return node not in self._entries and len(self._entries) >= self.node_limit

    def claim(self, node: NodeName, link: LinkT, session: SessionT) -> Entry[LinkT, SessionT] | None:
        """Make ``link`` the node's current link; returns the entry it replaces, to be closed."""
        previous = self._entries.get(node)
        self._entries[node] = Entry(link, session)
        return previous

    def is_current(self, node: NodeName, link: LinkT) -> bool:
        entry = self._entries.get(node)
        return entry is not None and entry.link is link

    def mark_ready(self, node: NodeName, session: SessionT) -> bool:
        """The session's handshake is done; False if it is no longer the node's current session."""
        entry = self._entries.get(node)
        if entry is None or entry.session is not session:
            return False
        entry.ready = True
        return True

    def release(self, node: NodeName, link: LinkT) -> Entry[LinkT, SessionT] | None:
        """Forget ``link`` if it is still the node's current one; the entry forgotten, or None."""
        entry = self._entries.get(node)
        if entry is None or entry.link is not link:
            return None
        del self._entries[node]
        return entry

    def get(self, node: NodeName) -> Entry[LinkT, SessionT] | None:
        return self._entries.get(node)

    def ready_link(self, node: NodeName) -> LinkT | None:
        entry = self._entries.get(node)
        return entry.link if entry is not None and entry.ready else None

    def ready_nodes(self) -> frozenset[NodeName]:
        return frozenset(node for node, entry in self._entries.items() if entry.ready)

    def entries(self) -> list[tuple[NodeName, Entry[LinkT, SessionT]]]:
        return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)
