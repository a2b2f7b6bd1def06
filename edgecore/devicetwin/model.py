"""DeviceTwin without I/O: the node's devices as validation needs them, mapper requests checked, and KubeEdge's
payload shapes (MsgTwin, deltas, documents, membership entries). Pure functions of their arguments; the
``DeviceTwin`` class around them holds state, talks to SQLite, EdgeHub and the EventBus.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from common.devices import MAX_PAYLOAD_BYTES, device_id, member
from edgecore.devicetwin.store import TwinRow
from edgecore.devicetwin.values import InvalidValue, check_value, wire_value

MAX_STATE_BYTES = 64


class Rejection(Exception):
    """A mapper request that changes nothing; ``code`` is KubeEdge's (400 bad request, 404 unknown device)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeDevice:
    """One of the node's devices, with what validation needs from it and its model."""

    id: str  # <namespace>/<name>
    namespace: str
    name: str
    obj: dict[str, Any]
    model: dict[str, Any] | None
    model_name: str
    properties: dict[str, dict[str, Any]]  # Device.spec.properties by name
    types: dict[str, str]  # DeviceModel property types (INT, FLOAT, ...) by name
    shape: bytes = field(repr=False)  # the membership entry without desired values, to spot updates

    @classmethod
    def build(cls, obj: dict[str, Any], model: dict[str, Any] | None) -> NodeDevice:
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or "default"
        spec = obj.get("spec") or {}
        properties = {p["name"]: p for p in spec.get("properties") or [] if isinstance(p, dict) and p.get("name")}
        model_props = ((model or {}).get("spec") or {}).get("properties") or []
        types = {
            p["name"]: str(p.get("type") or "STRING").upper()
            for p in model_props
            if isinstance(p, dict) and p.get("name")
        }
        entry = member(obj, model)
        entry["spec"] = {
            **entry["spec"],
            "properties": [{k: v for k, v in p.items() if k != "desired"} for p in properties.values()],
        }
        return cls(
            id=device_id(namespace, metadata["name"]),
            namespace=namespace,
            name=metadata["name"],
            obj=obj,
            model=model,
            model_name=str((spec.get("deviceModelRef") or {}).get("name") or ""),
            properties=properties,
            types=types,
            shape=orjson.dumps(entry, option=orjson.OPT_SORT_KEYS),
        )

    def desired(self) -> dict[str, str | None]:
        """Every property's desired value in the spec (None: no desired value)."""
        found: dict[str, str | None] = {}
        for name, prop in self.properties.items():
            value = (prop.get("desired") or {}).get("value")
            if value is None or isinstance(value, str):
                found[name] = value
            elif isinstance(value, bool | int | float):
                found[name] = wire_value(value)
            else:  # not KubeEdge's shape; pass it on as JSON rather than lose it
                found[name] = orjson.dumps(value).decode()
        return found


# --- requests ------------------------------------------------------------------------------------------------


def decode(payload: bytes) -> dict[str, Any]:
    """A mapper request's JSON object, or Rejection(400) saying why not."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejection(400, f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejection(400, "payload is not a JSON object")
    return data


def decode_leniently(payload: bytes) -> dict[str, Any]:
    """``decode``, with {} for anything it refuses (a membership/get needs no fields)."""
    try:
        return decode(payload)
    except Rejection:
        return {}


def event_id_of(data: dict[str, Any]) -> str:
    return data["event_id"] if isinstance(data.get("event_id"), str) else ""


def reported_values(device: NodeDevice, data: dict[str, Any]) -> dict[str, str]:
    """The reported value of each property in a twin/update, all checked against the model; Rejection if any
    property is unknown, untyped or of the wrong type (then nothing of the request applies)."""
    twin = data.get("twin")
    if not isinstance(twin, dict) or not twin:
        raise Rejection(400, "twin must be a non-empty object of properties")
    values: dict[str, str] = {}
    for prop, msg in twin.items():
        if prop not in device.properties:
            raise Rejection(400, f"device {device.id} has no property {prop!r}")
        if device.model is None:
            raise Rejection(404, f"device model {device.namespace}/{device.model_name} is unknown")
        kind = device.types.get(prop)
        if kind is None:
            raise Rejection(400, f"property {prop!r} is not in device model {device.model_name}")
        actual = msg.get("actual") if isinstance(msg, dict) else None
        if not isinstance(actual, dict) or "value" not in actual:
            raise Rejection(400, f"property {prop!r} has no actual value")
        try:
            value = wire_value(actual["value"])
            check_value(value, kind)
        except InvalidValue as exc:
            raise Rejection(400, f"property {prop!r}: {exc}") from None
        values[prop] = value
    return values


def reported_state(data: dict[str, Any]) -> str:
    state = data.get("state")
    if not isinstance(state, str) or not state or len(state.encode()) > MAX_STATE_BYTES:
        raise Rejection(400, f"state must be a non-empty string of at most {MAX_STATE_BYTES} bytes")
    return state


def with_report(before: TwinRow | None, device: str, prop: str, value: str, now_ms: int) -> TwinRow:
    """The twin row once ``value`` is reported: its reported version counts up."""
    if before is None:
        return TwinRow(device, prop, reported=value, reported_version=1, reported_ts=now_ms)
    return replace(before, reported=value, reported_version=before.reported_version + 1, reported_ts=now_ms)


# --- KubeEdge's payloads -------------------------------------------------------------------------------------


def msg_twin(device: NodeDevice, prop: str, row: TwinRow | None) -> dict[str, Any]:
    """One property as KubeEdge's MsgTwin: expected (desired) and actual (reported), each with its version."""
    twin: dict[str, Any] = {"metadata": {"type": device.types.get(prop, "STRING").lower()}}
    if row is not None and row.desired is not None:
        twin["expected"] = {"value": row.desired, "metadata": {"timestamp": row.desired_ts}}
        twin["expected_version"] = {"cloud": row.desired_version, "edge": 0}
    if row is not None and row.reported is not None:
        twin["actual"] = {"value": row.reported, "metadata": {"timestamp": row.reported_ts}}
        twin["actual_version"] = {"cloud": 0, "edge": row.reported_version}
    return twin


def all_twins(device: NodeDevice, rows: dict[str, TwinRow]) -> dict[str, Any]:
    return {prop: msg_twin(device, prop, rows.get(prop)) for prop in device.properties}


def delta_payload(
    device: NodeDevice, rows: dict[str, TwinRow], delta: dict[str, str], *, event_id: str, now_ms: int
) -> dict[str, Any]:
    """``twin/update/delta``: every property's twin, and the desired values the mapper should apply."""
    return {"event_id": event_id, "timestamp": now_ms, "twin": all_twins(device, rows), "delta": delta}


def twin_document(
    device: NodeDevice, changes: dict[str, tuple[TwinRow | None, TwinRow]], *, event_id: str, now_ms: int
) -> dict[str, Any]:
    """``twin/update/document``: each changed property's twin before and after."""
    return {
        "event_id": event_id,
        "timestamp": now_ms,
        "twin": {
            prop: {
                "last": msg_twin(device, prop, before) if before is not None else None,
                "current": msg_twin(device, prop, after),
            }
            for prop, (before, after) in changes.items()
        },
    }


def membership_entry(device: NodeDevice, state: str | None) -> dict[str, Any]:
    """The device as a membership list shows it, with the state its mapper last reported."""
    obj = (
        device.obj if state is None else {**device.obj, "status": {**(device.obj.get("status") or {}), "state": state}}
    )
    return member(obj, device.model)
