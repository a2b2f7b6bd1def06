"""What a mapper does with one device, read once from its membership entry (``common.devices.member``).

The entry holds the Device ``spec`` (protocol, properties with visitors and cycles) and its DeviceModel ``spec``
(property types, access modes, limits). ``plan_device`` validates it and merges the two per property, so the
device task never looks into raw JSON and a malformed entry is refused whole, with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from mappers.sdk.errors import InvalidConfig
from mappers.sdk.values import as_number, wire_type

Member: TypeAlias = dict[str, Any]
"""A membership entry, as ``common.devices.member`` builds it: id, name, namespace, state, spec, model."""

DEFAULT_COLLECT_MS = 1000
DEFAULT_STATE_REPORT_MS = 60_000  # the state is sent on every change, and again this often in case one was lost
MIN_CYCLE_MS = 50  # a typo of 1 ms must not turn a mapper into a busy loop against a field bus
MAX_PROPERTIES = 256


@dataclass(frozen=True)
class PropertyPlan:
    name: str
    type: str  # lower-case, as the twin's metadata.type
    writable: bool
    minimum: float | None
    maximum: float | None
    visitor: dict[str, Any]  # the visitor's configData, handed to the driver as is
    collect_s: float
    report_s: float
    report_to_cloud: bool
    desired: str | None  # spec.properties[].desired.value, applied once the driver is ready


@dataclass(frozen=True)
class DevicePlan:
    id: str  # "<namespace>/<name>"
    protocol: str
    properties: tuple[PropertyPlan, ...]
    state_report_s: float = DEFAULT_STATE_REPORT_MS / 1000

    def property(self, name: str) -> PropertyPlan | None:
        return next((p for p in self.properties if p.name == name), None)


def protocol_name(entry: object) -> str:
    """``spec.protocol.protocolName`` of a membership entry, or "" when it has none."""
    if not isinstance(entry, dict):
        return ""
    protocol = _dict(_dict(entry.get("spec")).get("protocol"))
    name = protocol.get("protocolName")
    return name if isinstance(name, str) else ""


def plan_device(entry: Member) -> DevicePlan:
    """Validate a membership entry. ``InvalidConfig`` names what is wrong."""
    device = entry.get("id")
    if not isinstance(device, str) or device.count("/") != 1 or not all(device.split("/")):
        raise InvalidConfig(f"device id must be '<namespace>/<name>', got {device!r}")
    if any(c in device for c in "+#\x00"):
        raise InvalidConfig(f"device id {device!r} holds an MQTT wildcard")
    spec = entry.get("spec")
    if not isinstance(spec, dict):
        raise InvalidConfig("spec must be an object")
    protocol = protocol_name(entry)
    if not protocol:
        raise InvalidConfig("spec.protocol.protocolName is missing")
    raw_properties = spec.get("properties") or []
    if not isinstance(raw_properties, list):
        raise InvalidConfig("spec.properties must be a list")
    if len(raw_properties) > MAX_PROPERTIES:
        raise InvalidConfig(f"{len(raw_properties)} properties; at most {MAX_PROPERTIES}")
    model = _model_properties(entry.get("model"))
    properties = tuple(_plan_property(raw, model, protocol) for raw in raw_properties)
    names = [p.name for p in properties]
    if len(set(names)) != len(names):
        raise InvalidConfig(f"property names repeat: {names}")
    state_report_ms = _cycle(_dict(spec.get("stateReport")).get("reportCycle"), DEFAULT_STATE_REPORT_MS, "stateReport")
    return DevicePlan(id=device, protocol=protocol, properties=properties, state_report_s=state_report_ms / 1000)


def _plan_property(raw: object, model: dict[str, dict[str, Any]], protocol: str) -> PropertyPlan:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise InvalidConfig(f"a property needs a name: {raw!r}")
    name: str = raw["name"]
    visitors = _dict(raw.get("visitors"))
    visitor_protocol = visitors.get("protocolName")
    if visitor_protocol not in (None, "", protocol):
        raise InvalidConfig(f"property {name}: visitor is for {visitor_protocol!r}, the device speaks {protocol!r}")
    collect_ms = _cycle(raw.get("collectCycle"), DEFAULT_COLLECT_MS, f"property {name}: collectCycle")
    report_ms = _cycle(raw.get("reportCycle"), collect_ms, f"property {name}: reportCycle")
    desired = _dict(raw.get("desired")).get("value")
    declared = model.get(name, {})
    access = declared.get("accessMode", "ReadWrite")
    return PropertyPlan(
        name=name,
        type=wire_type(declared.get("type")),
        writable=access != "ReadOnly",
        minimum=as_number(declared.get("minimum")),
        maximum=as_number(declared.get("maximum")),
        visitor=_dict(visitors.get("configData")),
        collect_s=collect_ms / 1000,
        report_s=report_ms / 1000,
        # KubeEdge's Go default is false, which silently hides every property a user forgot to flag;
        # here a property is reported unless it says reportToCloud: false.
        report_to_cloud=raw.get("reportToCloud") is not False,
        desired=desired if isinstance(desired, str) and desired != "" else None,
    )


def _model_properties(model: object) -> dict[str, dict[str, Any]]:
    properties = _dict(model).get("properties") or []
    if not isinstance(properties, list):
        raise InvalidConfig("model.properties must be a list")
    return {p["name"]: p for p in properties if isinstance(p, dict) and isinstance(p.get("name"), str)}


def _cycle(value: object, default: int, what: str) -> int:
    if value in (None, "", 0):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidConfig(f"{what} must be milliseconds, got {value!r}")
    try:
        ms = int(float(value))
    except (ValueError, OverflowError):
        raise InvalidConfig(f"{what} must be milliseconds, got {value!r}") from None
    if ms < 0:
        raise InvalidConfig(f"{what} must not be negative, got {ms}")
    return max(ms, MIN_CYCLE_MS)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
