"""Cloud → edge object sync for one node session: the desired set against what the edge holds.

The hub owns each node's *desired* set (UID → the object as the cloud wants it at the edge), kept current by
the controllers whether or not the node is connected. A session starts from the edge's inventory (UID →
resourceVersion from its SQLite store) and sends only the difference: objects that are missing or newer, and
deletes for what the edge holds that is no longer assigned to it. Acks then move each object into *known*.
Nothing is queued per event: a UID marked many times is sent once, at its newest version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.messages import Group, Message, MessageError, ObjectUid, Operation, Resource, new_message
from common.protocol.reliable import DEFAULT_WINDOW, InFlight, ReliableSender
from common.protocol.versions import is_newer

SOURCE = "edgecontroller"


@dataclass(frozen=True, slots=True)
class DesiredObject:
    uid: ObjectUid
    resource_version: str
    resource: str  # "<namespace>/<type>/<name>"
    content: Any  # the object, JSON-compatible
    digest: str = ""  # content_digest(content); lets a reconnect skip objects the edge already has in substance


@dataclass(frozen=True, slots=True)
class Sent:
    """What one reliable message carried, so its ack can update ``known``."""

    uid: ObjectUid
    resource_version: str | None  # None: a delete
    digest: str
    message: Message


class DownstreamSync:
    __slots__ = ("_desired", "_known_digests", "_resources", "acked", "known", "resync_count", "sender")

    def __init__(
        self,
        desired: Mapping[ObjectUid, DesiredObject],
        inventory: Mapping[ObjectUid, str],
        *,
        digests: Mapping[ObjectUid, str] | None = None,
        window: int = DEFAULT_WINDOW,
        retransmit_after: float = 5.0,
    ) -> None:
        self._desired = desired  # shared with the hub, read at send time so the newest version goes out
        self.known: dict[ObjectUid, str] = dict(inventory)
        self._known_digests: dict[ObjectUid, str] = dict(digests or {})
        self._resources: dict[ObjectUid, str] = {}  # last resource string seen per UID, for deletes
        self.sender: ReliableSender[ObjectUid, Sent] = ReliableSender(window=window, retransmit_after=retransmit_after)
        for uid in desired:
            if self._needs_send(uid):
                self.sender.mark(uid)
        for uid in self.known:
            if uid not in desired:
                self.sender.mark(uid)
        self.resync_count = self.sender.pending_count  # how many objects the reconnect had to send
        self.acked = 0

    def changed(self, uid: ObjectUid) -> None:
        """The hub changed or removed ``uid`` in the desired set."""
        if uid in self._desired:
            self._resources[uid] = self._desired[uid].resource
        self.sender.mark(uid)

    def _needs_send(self, uid: ObjectUid) -> bool:
        want = self._desired.get(uid)
        have = self.known.get(uid)
        if want is None:
            return have is not None
        if want.digest and have is not None and self._known_digests.get(uid) == want.digest:
            return False  # the edge holds this content already, under an older resourceVersion
        return is_newer(want.resource_version, have)

    def poll(self, now: float, now_ms: int) -> list[Message]:
        def produce(uid: ObjectUid, seq: int) -> Sent | None:
            if not self._needs_send(uid):
                return None
            want = self._desired.get(uid)
            if want is None:
                resource = self._resources.get(uid, "")
                message = new_message(
                    source=SOURCE,
                    group=Group.RESOURCE,
                    operation=Operation.DELETE,
                    resource=resource,
                    content=_delete_content(uid, resource),
                    now_ms=now_ms,
                    seq=seq,
                )
                return Sent(uid, None, "", message)
            self._resources[uid] = want.resource
            operation = Operation.UPDATE if uid in self.known else Operation.INSERT
            message = new_message(
                source=SOURCE,
                group=Group.RESOURCE,
                operation=operation,
                resource=want.resource,
                content=want.content,
                now_ms=now_ms,
                seq=seq,
                resourceversion=want.resource_version,
            )
            return Sent(uid, want.resource_version, want.digest, message)

        return [flight.payload.message for flight in self.sender.poll(now, produce)]

    def on_ack(self, ack: int) -> list[InFlight[ObjectUid, Sent]]:
        done = self.sender.on_ack(ack)
        for flight in done:
            sent = flight.payload
            if sent.resource_version is None:
                self.known.pop(sent.uid, None)
                self._known_digests.pop(sent.uid, None)
                if sent.uid not in self._desired:
                    self._resources.pop(sent.uid, None)
            else:
                self.known[sent.uid] = sent.resource_version
                self._known_digests[sent.uid] = sent.digest
        self.acked += len(done)
        return done

    def in_sync(self) -> bool:
        return self.sender.idle()

    def next_deadline(self) -> float | None:
        return self.sender.next_deadline()


def _delete_content(uid: ObjectUid, resource: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"uid": uid}
    if resource:
        parsed = Resource.parse(resource)
        metadata["name"] = parsed.name
        if parsed.namespace is not None:
            metadata["namespace"] = parsed.namespace
    return {"metadata": metadata}


# --- the edge's side -------------------------------------------------------------------------------------


def object_uid(message: Message) -> ObjectUid:
    """The UID a reliable object message is about (``content.metadata.uid``, as in every Kubernetes object)."""
    content = message.content
    metadata = content.get("metadata") if isinstance(content, dict) else None
    uid = metadata.get("uid") if isinstance(metadata, dict) else None
    if not isinstance(uid, str) or not uid:
        raise MessageError(f"{message.route.operation} {message.route.resource or '?'}: content.metadata.uid missing")
    return ObjectUid(uid)


def should_apply(message: Message, stored_rv: str | None) -> bool:
    """Whether the edge store should apply ``message`` over what it holds: idempotent, never older over newer."""
    if message.route.operation == Operation.DELETE:
        return stored_rv is not None
    if message.route.operation in (Operation.INSERT, Operation.UPDATE):
        return is_newer(message.header.resourceversion, stored_rv)
    return False
