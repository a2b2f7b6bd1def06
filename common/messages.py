"""The message envelope, with KubeEdge's JSON field names, and its codec.

On the wire (one WebSocket text frame holds one envelope, or a JSON array of them once batching is agreed):

    {"header": {"msg_id", "parent_msg_id", "timestamp", "resourceversion", "sync", "type", "seq", "ack"},
     "route":  {"source", "destination", "group", "operation", "resource"},
     "content": ...}

``seq`` and ``ack`` are ours: ``seq`` numbers a reliable message within a session, ``ack`` is cumulative
(everything up to it is durably applied). KubeEdge's decoder ignores keys it does not know.

Decoding validates everything before anything is returned: malformed input raises ``MessageError`` and no
half-built message escapes.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, NewType

import orjson

MsgId = NewType("MsgId", str)
NodeName = NewType("NodeName", str)
ObjectUid = NewType("ObjectUid", str)

# Kubernetes objects are at most ~1.5 MiB (etcd's request limit); a batch frame holds several.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BATCH = 4096  # envelopes in one frame: an edge's batches hold its window (64) and a few acks
NULL_NAMESPACE = "null"  # KubeEdge's namespace for cluster-scoped objects in resource strings


class MessageError(ValueError):
    """Input that is not a valid envelope (or batch of envelopes). The message says what is wrong."""


class Operation(enum.StrEnum):
    # KubeEdge's operations
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    QUERY = "query"
    RESPONSE = "response"
    ERROR = "error"
    PATCH = "patch"
    UPLOAD = "upload"
    KEEPALIVE = "keepalive"
    # Session control, ours (group "hub")
    HELLO = "hello"
    WELCOME = "welcome"
    ACK = "ack"


class Group(enum.StrEnum):
    RESOURCE = "resource"  # Kubernetes objects: edgecontroller <-> metamanager
    TWIN = "twin"  # devices: devicecontroller <-> devicetwin
    USER = "user"  # application messages (router, eventbus)
    FUNC = "func"
    HUB = "hub"  # session control between CloudHub and EdgeHub
    STREAM = "stream"  # "open a stream": cloudstream -> edgestream (common/streams.py)
    SEDNA = "sedna"  # federated learning: the local controller -> the global manager (common/upstream.py)


@dataclass(frozen=True, slots=True)
class Resource:
    """``<namespace>/<type>/<name>``; cluster-scoped objects have ``namespace=None`` (``null`` on the wire)."""

    namespace: str | None
    type: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Resource:
        return cls(*cls.split(text))

    @staticmethod
    def split(text: str) -> tuple[str | None, str, str]:
        """``(namespace, type, name)`` without building a Resource: the edge store's per-row path."""
        parts = text.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2] or not parts[0]:
            raise MessageError(f"resource {text!r} is not <namespace>/<type>/<name>")
        namespace, kind, name = parts
        return None if namespace == NULL_NAMESPACE else namespace, kind, name

    def __str__(self) -> str:
        return f"{self.namespace if self.namespace is not None else NULL_NAMESPACE}/{self.type}/{self.name}"


@dataclass(frozen=True, slots=True)
class Header:
    msg_id: MsgId
    timestamp: int  # milliseconds since the epoch, as KubeEdge
    parent_msg_id: MsgId | None = None
    resourceversion: str = ""
    sync: bool = False
    type: str = ""
    seq: int | None = None
    ack: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    source: str
    group: str
    operation: str
    resource: str = ""
    destination: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    route: Route
    content: Any = field(default=None)

    @property
    def operation(self) -> str:
        return self.route.operation


def new_msg_id() -> MsgId:
    return MsgId(uuid.uuid4().hex)


def new_message(
    *,
    source: str,
    group: str,
    operation: str,
    resource: str = "",
    content: Any = None,
    now_ms: int,
    parent_msg_id: MsgId | None = None,
    resourceversion: str = "",
    seq: int | None = None,
    ack: int | None = None,
) -> Message:
    header = Header(
        msg_id=new_msg_id(),
        timestamp=now_ms,
        parent_msg_id=parent_msg_id,
        resourceversion=resourceversion,
        seq=seq,
        ack=ack,
    )
    # str() turns Group/Operation members into the plain strings a decoded message holds
    route = Route(source=source, group=str(group), operation=str(operation), resource=resource)
    return Message(header, route, content)


# --- codec -----------------------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    h = message.header
    header: dict[str, Any] = {"msg_id": h.msg_id, "timestamp": h.timestamp}
    if h.parent_msg_id:
        header["parent_msg_id"] = h.parent_msg_id
    if h.resourceversion:
        header["resourceversion"] = h.resourceversion
    if h.sync:
        header["sync"] = True
    if h.type:
        header["type"] = h.type
    if h.seq is not None:
        header["seq"] = h.seq
    if h.ack is not None:
        header["ack"] = h.ack
    r = message.route
    route = {"source": r.source, "group": r.group, "operation": r.operation}
    if r.resource:
        route["resource"] = r.resource
    if r.destination:
        route["destination"] = r.destination
    return {"header": header, "route": route, "content": message.content}


def encode(message: Message | list[Message]) -> bytes:
    """One envelope, or a list of them as one JSON array (a batch frame)."""
    if isinstance(message, list):
        return orjson.dumps([to_dict(m) for m in message])
    return orjson.dumps(to_dict(message))


def decode(
    data: bytes | str, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_batch: int = DEFAULT_MAX_BATCH
) -> list[Message]:
    """Decode one frame into its envelopes (a single envelope gives a list of one)."""
    size = len(data)
    if size > max_bytes:
        raise MessageError(f"frame of {size} bytes exceeds the limit of {max_bytes}")
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"frame is not valid JSON: {exc}") from None
    if isinstance(parsed, list):
        if not parsed:
            raise MessageError("batch frame is empty")
        if len(parsed) > max_batch:
            raise MessageError(f"batch of {len(parsed)} envelopes exceeds the limit of {max_batch}")
        return [from_dict(item, where=f"batch[{i}]") for i, item in enumerate(parsed)]
    return [from_dict(parsed)]


def from_dict(raw: object, *, where: str = "envelope") -> Message:
    if not isinstance(raw, dict):
        raise MessageError(f"{where}: expected a JSON object, got {_kind(raw)}")
    header = _section(raw, "header", where)
    route = _section(raw, "route", where)
    w = f"{where}.header"
    parsed_header = Header(
        msg_id=MsgId(_str(header, "msg_id", w, required=True)),
        timestamp=_int(header, "timestamp", w, required=True) or 0,
        parent_msg_id=MsgId(p) if (p := _str(header, "parent_msg_id", w)) else None,
        resourceversion=_str(header, "resourceversion", w),
        sync=_bool(header, "sync", w),
        type=_str(header, "type", w),
        seq=_int(header, "seq", w, positive=True),
        ack=_int(header, "ack", w, positive=True, allow_zero=True),
    )
    w = f"{where}.route"
    parsed_route = Route(
        source=_str(route, "source", w),
        group=_str(route, "group", w),
        operation=_str(route, "operation", w, required=True),
        resource=_str(route, "resource", w),
        destination=_str(route, "destination", w),
    )
    return Message(parsed_header, parsed_route, raw.get("content"))


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise MessageError(f"{where}.{key}: expected an object, got {_kind(value)}")
    return value


def _str(section: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = section.get(key)
    if value is None:
        if required:
            raise MessageError(f"{where}.{key}: missing")
        return ""
    if not isinstance(value, str):
        raise MessageError(f"{where}.{key}: expected a string, got {_kind(value)}")
    if required and not value:
        raise MessageError(f"{where}.{key}: empty")
    return value


def _int(
    section: dict[str, Any],
    key: str,
    where: str,
    *,
    required: bool = False,
    positive: bool = False,
    allow_zero: bool = False,
) -> int | None:
    value = section.get(key)
    if value is None:
        if required:
            raise MessageError(f"{where}.{key}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{where}.{key}: expected an integer, got {_kind(value)}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise MessageError(f"{where}.{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _bool(section: dict[str, Any], key: str, where: str) -> bool:
    value = section.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MessageError(f"{where}.{key}: expected a boolean, got {_kind(value)}")
    return value
