"""The hub session between one EdgeHub and CloudHub: handshake, reliable streams both ways, liveness.

    edge → cloud   hello    {"version": 1, "inventory": {uid: resourceVersion}, "digests": {uid: digest},
                             "batching": bool}
    cloud → edge   welcome  {"version": 1, "batching": bool, "keepaliveInterval": s, "resync": n}

Then the cloud streams object messages (``DownstreamSync``) and the edge drains its outbox (``Outbox``);
each side acks what the other sent with a cumulative ``ack`` message once it is durably handled. Either
side sends a keepalive after ``keepalive_interval`` without sending anything, and gives the link up after
``read_timeout`` without receiving anything, so a half-open TCP connection is found in a few intervals.

Plain classes: messages and times go in, events and messages come out. The I/O layer calls
``receive``, ``messages_to_send``, ``check_timeouts`` and sleeps until ``next_deadline``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.messages import Group, Message, NodeName, ObjectUid, Operation, new_message
from common.protocol.downstream import DesiredObject, DownstreamSync
from common.protocol.outbox import Outbox, OutboxItem
from common.protocol.reliable import DEFAULT_WINDOW, ReliableReceiver

PROTOCOL_VERSION = 1
DEFAULT_KEEPALIVE_INTERVAL = 15.0
READ_TIMEOUT_FACTOR = 2.5  # silence for 2.5 keepalive intervals means the link is dead
DEFAULT_MAX_INVENTORY = 10_000  # objects a node holds; a gateway's are a few hundred
MAX_INVENTORY_ITEM = 256  # characters of a UID (36), resourceVersion (~20) or digest (64), with room to spare


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007  # malformed message
    POLICY_VIOLATION = 1008  # authentication or authorization
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # node limit reached
    REPLACED = 4000  # the same node connected again
    TIMEOUT = 4001  # nothing received within the read deadline


@dataclass(frozen=True, slots=True)
class Close:
    """The session must end: close the connection with this code and reason."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Ready:
    """Handshake complete; ``resync`` objects had to be sent to bring the edge up to date."""

    resync: int
    batching: bool


@dataclass(frozen=True, slots=True)
class Deliver:
    """A reliable message to handle; call ``delivered(seq)`` once it is durably handled, then it is acked."""

    message: Message

    @property
    def seq(self) -> int:
        assert self.message.header.seq is not None
        return self.message.header.seq


@dataclass(frozen=True, slots=True)
class Received:
    """A best-effort message (a query, a response): handle it, nothing is acked."""

    message: Message


@dataclass(frozen=True, slots=True)
class OutboxDelivered:
    """The cloud acked these outbox items: delete them from the durable outbox."""

    items: list[OutboxItem]


Event = Close | Ready | Deliver | Received | OutboxDelivered


class _Liveness:
    # Slots on the per-session classes: a CloudCore holds one session per edge, 10,000 in one process.
    __slots__ = ("interval", "last_received", "last_sent", "read_timeout")

    def __init__(self, now: float, keepalive_interval: float, read_timeout: float | None) -> None:
        self.interval = keepalive_interval
        self.read_timeout = read_timeout if read_timeout is not None else keepalive_interval * READ_TIMEOUT_FACTOR
        self.last_received = now
        self.last_sent = now

    def keepalive_due(self, now: float) -> bool:
        return now - self.last_sent >= self.interval

    def dead(self, now: float) -> bool:
        return now - self.last_received > self.read_timeout

    def next_deadline(self) -> float:
        return min(self.last_sent + self.interval, self.last_received + self.read_timeout)


class _Session:
    __slots__ = ("batching", "established", "liveness", "receiver")
    role = ""
    source = ""

    def __init__(self, *, now: float, keepalive_interval: float, read_timeout: float | None) -> None:
        self.liveness = _Liveness(now, keepalive_interval, read_timeout)
        self.receiver = ReliableReceiver()
        self.established = False
        self.batching = False

    def delivered(self, seq: int) -> None:
        self.receiver.committed(seq)

    def check_timeouts(self, now: float) -> Close | None:
        if self.liveness.dead(now):
            silent = now - self.liveness.last_received
            return Close(CloseCode.TIMEOUT, f"nothing received from the {self.peer} for {silent:.1f}s")
        return None

    @property
    def peer(self) -> str:
        return "edge" if self.role == "cloud" else "cloud"

    def _control(self, operation: Operation, now_ms: int, content: Any = None, ack: int | None = None) -> Message:
        return new_message(
            source=self.source, group=Group.HUB, operation=operation, content=content, now_ms=now_ms, ack=ack
        )

    def _finish(self, out: list[Message], now: float, now_ms: int) -> list[Message]:
        if self.receiver.ack_due():
            out.append(self._control(Operation.ACK, now_ms, ack=self.receiver.ack_sent()))
        if not out and self.liveness.keepalive_due(now):
            out.append(self._control(Operation.KEEPALIVE, now_ms, content="ping"))
        if out:
            self.liveness.last_sent = now
        return out

    def _receive_data(self, message: Message) -> list[Event]:
        if message.route.group == Group.HUB:
            if message.route.operation in (Operation.KEEPALIVE, Operation.ACK):
                return []
            return [Close(CloseCode.PROTOCOL_ERROR, f"unexpected {message.route.operation} in an open session")]
        seq = message.header.seq
        if seq is None:
            return [Received(message)]
        return [Deliver(message)] if self.receiver.accept(seq) else []


class CloudSession(_Session):
    __slots__ = (
        "_allow_batching",
        "_desired",
        "_max_inventory",
        "_retransmit_after",
        "_welcome",
        "_window",
        "downstream",
        "node",
    )
    role = "cloud"
    source = "cloudhub"

    def __init__(
        self,
        node: NodeName,
        desired: Mapping[ObjectUid, DesiredObject],
        *,
        now: float,
        window: int = DEFAULT_WINDOW,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        read_timeout: float | None = None,
        allow_batching: bool = True,
        retransmit_after: float = 5.0,
        max_inventory: int = DEFAULT_MAX_INVENTORY,
    ) -> None:
        super().__init__(now=now, keepalive_interval=keepalive_interval, read_timeout=read_timeout)
        self.node = node
        self._max_inventory = max_inventory
        self._desired = desired
        self._window = window
        self._allow_batching = allow_batching
        self._retransmit_after = retransmit_after
        self.downstream: DownstreamSync | None = None
        self._welcome: Message | None = None

    def receive(self, message: Message, now: float, now_ms: int) -> list[Event]:
        self.liveness.last_received = now
        if not self.established:
            return self._handshake(message, now_ms)
        if message.header.ack is not None and self.downstream is not None:
            self.downstream.on_ack(message.header.ack)
        return self._receive_data(message)

    def _handshake(self, message: Message, now_ms: int) -> list[Event]:
        refused = self._refused_hello(message)
        if refused is not None:
            return [refused]
        hello = message.content
        inventory, digests = hello.get("inventory", {}), hello.get("digests", {})
        self.batching = bool(hello.get("batching")) and self._allow_batching
        self.downstream = DownstreamSync(
            self._desired,
            {ObjectUid(k): v for k, v in inventory.items()},
            digests={ObjectUid(k): v for k, v in digests.items()},
            window=self._window,
            retransmit_after=self._retransmit_after,
        )
        self._welcome = self._control(
            Operation.WELCOME,
            now_ms,
            content={
                "version": PROTOCOL_VERSION,
                "batching": self.batching,
                "keepaliveInterval": self.liveness.interval,
                "resync": self.downstream.resync_count,
            },
        )
        self.established = True
        return [Ready(self.downstream.resync_count, self.batching)]

    def _refused_hello(self, message: Message) -> Close | None:
        """Why a first message is not a hello this session takes, or None."""
        if message.route.operation != Operation.HELLO:
            return Close(CloseCode.PROTOCOL_ERROR, f"expected hello first, got {message.route.operation!r}")
        hello = message.content
        if not isinstance(hello, dict):
            return Close(CloseCode.INVALID_DATA, "hello content must be an object")
        version = hello.get("version")
        if version != PROTOCOL_VERSION:
            return Close(
                CloseCode.PROTOCOL_ERROR,
                f"unsupported protocol version {version!r}; this CloudCore speaks {PROTOCOL_VERSION}",
            )
        inventory = hello.get("inventory", {})
        if not isinstance(inventory, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in inventory.items()
        ):
            return Close(CloseCode.INVALID_DATA, "hello inventory must map object UIDs to resourceVersion strings")
        digests = hello.get("digests", {})
        if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
            return Close(CloseCode.INVALID_DATA, "hello digests must map object UIDs to digest strings")
        return self._oversized(inventory, digests)

    def _oversized(self, inventory: dict[str, str], digests: dict[str, str]) -> Close | None:
        """A hello bigger than any real node's: too many entries (1009), or keys or values longer than any UID,
        resourceVersion or digest (1008)."""
        for name, entries in (("inventory", inventory), ("digests", digests)):
            if len(entries) > self._max_inventory:
                return Close(
                    CloseCode.TOO_BIG, f"hello {name} has {len(entries)} entries; the limit is {self._max_inventory}"
                )
            for key, value in entries.items():
                if len(key) > MAX_INVENTORY_ITEM or len(value) > MAX_INVENTORY_ITEM:
                    return Close(
                        CloseCode.POLICY_VIOLATION,
                        f"hello {name} has an entry of {max(len(key), len(value))} characters; "
                        f"the limit is {MAX_INVENTORY_ITEM}",
                    )
        return None

    def changed(self, uid: ObjectUid) -> None:
        if self.downstream is not None:
            self.downstream.changed(uid)

    def messages_to_send(self, now: float, now_ms: int) -> list[Message]:
        out: list[Message] = []
        if self._welcome is not None:
            out.append(self._welcome)
            self._welcome = None
        if self.downstream is not None:
            out.extend(self.downstream.poll(now, now_ms))
        return self._finish(out, now, now_ms)

    def next_deadline(self) -> float:
        deadline = self.liveness.next_deadline()
        retransmit = self.downstream.next_deadline() if self.downstream is not None else None
        return deadline if retransmit is None else min(deadline, retransmit)


class EdgeSession(_Session):
    __slots__ = ("_digests", "_inventory", "_want_batching", "outbox", "resync")
    role = "edge"
    source = "edgehub"

    def __init__(
        self,
        inventory: Mapping[ObjectUid, str],
        outbox: Outbox,
        *,
        digests: Mapping[ObjectUid, str] | None = None,
        now: float,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        read_timeout: float | None = None,
        batching: bool = True,
    ) -> None:
        super().__init__(now=now, keepalive_interval=keepalive_interval, read_timeout=read_timeout)
        self._inventory = inventory
        self._digests = digests or {}
        self._want_batching = batching
        self.outbox = outbox
        self.resync = 0

    def hello(self, now: float, now_ms: int) -> Message:
        """The first message of the session."""
        self.liveness.last_sent = now
        return self._control(
            Operation.HELLO,
            now_ms,
            content={
                "version": PROTOCOL_VERSION,
                "inventory": dict(self._inventory),
                "digests": dict(self._digests),
                "batching": self._want_batching,
            },
        )

    def receive(self, message: Message, now: float, now_ms: int) -> list[Event]:
        del now_ms  # the edge answers nothing synchronously; kept for symmetry with CloudSession
        self.liveness.last_received = now
        if not self.established:
            return self._welcomed(message)
        events: list[Event] = []
        if message.header.ack is not None:
            delivered = self.outbox.on_ack(message.header.ack)
            if delivered:
                events.append(OutboxDelivered(delivered))
        events.extend(self._receive_data(message))
        return events

    def _welcomed(self, message: Message) -> list[Event]:
        welcome = message.content
        if message.route.operation != Operation.WELCOME or not isinstance(welcome, dict):
            return [Close(CloseCode.PROTOCOL_ERROR, f"expected welcome first, got {message.route.operation!r}")]
        if welcome.get("version") != PROTOCOL_VERSION:
            return [
                Close(
                    CloseCode.PROTOCOL_ERROR,
                    f"cloud speaks protocol {welcome.get('version')!r}, this EdgeCore {PROTOCOL_VERSION}",
                )
            ]
        self.batching = bool(welcome.get("batching"))
        resync = welcome.get("resync")
        self.resync = resync if isinstance(resync, int) else 0
        self.established = True
        self.outbox.start_session()
        return [Ready(self.resync, self.batching)]

    def close(self) -> None:
        """The connection ended: whatever was in flight goes out again next session."""
        self.outbox.end_session()

    def messages_to_send(self, now: float, now_ms: int) -> list[Message]:
        out = self.outbox.poll(now, now_ms) if self.established else []
        return self._finish(out, now, now_ms)

    def next_deadline(self) -> float:
        deadline = self.liveness.next_deadline()
        retransmit = self.outbox.next_deadline()
        return deadline if retransmit is None else min(deadline, retransmit)
