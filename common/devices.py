"""The device contract between EdgeCore and mappers: KubeEdge's MQTT topics and payloads.

A device's id is ``<namespace>/<name>``, so its topics have KubeEdge's two-level form
``$hw/events/device/<namespace>/<name>/...``. Payloads are KubeEdge's JSON shapes; where a mapper here needs
more than KubeEdge's MQTT payloads carry (KubeEdge's newer mappers get device specs over DMI gRPC), the
membership payload adds each device's ``spec`` and its model's ``spec`` beside KubeEdge's fields.

    mapper → edge   $hw/events/node/<node>/membership/get           {"event_id"}
    edge → mapper   $hw/events/node/<node>/membership/get/result    {"event_id", "timestamp", "devices": [Member]}
    edge → mapper   $hw/events/node/<node>/membership/updated       {"event_id", "timestamp", "added_devices": [Member],
                                                                     "removed_devices": [Member]}
    mapper → edge   $hw/events/device/<id>/twin/update              {"event_id", "timestamp", "twin": {prop: MsgTwin}}
    edge → mapper   $hw/events/device/<id>/twin/update/result       the same twin, or {"event_id", "code", "reason"}
    edge → mapper   $hw/events/device/<id>/twin/update/delta        {"event_id", "timestamp", "twin": {...},
                                                                     "delta": {prop: desired value}}
    edge → mapper   $hw/events/device/<id>/twin/update/document     {"event_id", "timestamp", "twin": {prop: {"last",
                                                                     "current"}}}
    mapper → edge   $hw/events/device/<id>/twin/get                 {"event_id"}
    edge → mapper   $hw/events/device/<id>/twin/get/result          {"event_id", "timestamp", "twin": {prop: MsgTwin}}
    mapper → edge   $hw/events/device/<id>/state/update             {"event_id", "state": "online" | "offline" | ...}
    edge → mapper   $hw/events/device/<id>/state/update/result      {"event_id", "timestamp", "state"} or an error

MsgTwin: ``{"expected": {"value": str, "metadata": {"timestamp": ms}}, "actual": {"value": str, "metadata":
{"timestamp": ms}}, "metadata": {"type": "int" | "float" | "double" | "string" | "boolean" | ...}}``. Values are
strings on the wire, as in KubeEdge. Errors use KubeEdge's codes: 400 bad request, 404 unknown device,
409 version conflict, 500 internal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREFIX = "$hw/events"
MAX_PAYLOAD_BYTES = 64 * 1024  # a twin message is small; anything larger is refused with 400
MAX_VALUE_BYTES = 512  # KubeEdge's limit for a twin value

# The property types of DeviceModel.spec.properties[].type, as KubeEdge spells them.
PROPERTY_TYPES = ("INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES", "STREAM")


def device_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def twin_update(device: str) -> str:
    return f"{PREFIX}/device/{device}/twin/update"


def twin_update_result(device: str) -> str:
    return f"{twin_update(device)}/result"


def twin_update_delta(device: str) -> str:
    return f"{twin_update(device)}/delta"


def twin_update_document(device: str) -> str:
    return f"{twin_update(device)}/document"


def twin_get(device: str) -> str:
    return f"{PREFIX}/device/{device}/twin/get"


def twin_get_result(device: str) -> str:
    return f"{twin_get(device)}/result"


def state_update(device: str) -> str:
    return f"{PREFIX}/device/{device}/state/update"


def state_update_result(device: str) -> str:
    return f"{state_update(device)}/result"


def membership_get(node: str) -> str:
    return f"{PREFIX}/node/{node}/membership/get"


def membership_get_result(node: str) -> str:
    return f"{membership_get(node)}/result"


def membership_updated(node: str) -> str:
    return f"{PREFIX}/node/{node}/membership/updated"


# What the edge subscribes to: every device's twin and state requests, and membership requests.
EDGE_SUBSCRIPTIONS = (
    f"{PREFIX}/device/+/+/twin/update",
    f"{PREFIX}/device/+/+/twin/get",
    f"{PREFIX}/device/+/+/state/update",
    f"{PREFIX}/node/+/membership/get",
)


@dataclass(frozen=True)
class Topic:
    """A parsed request topic: which device (or node) and what it asks."""

    kind: str  # "twin/update", "twin/get", "state/update" or "membership/get"
    device: str = ""  # "<namespace>/<name>" for device topics
    node: str = ""  # for membership


def parse_request_topic(topic: str) -> Topic | None:
    """The request a topic carries, or None for topics that are not requests to the edge."""
    parts = topic.split("/")
    if len(parts) == 7 and parts[:3] == ["$hw", "events", "device"]:
        kind = "/".join(parts[5:])
        if kind in ("twin/update", "twin/get", "state/update"):
            return Topic(kind, device=f"{parts[3]}/{parts[4]}")
    if len(parts) == 6 and parts[:3] == ["$hw", "events", "node"] and parts[4:] == ["membership", "get"]:
        return Topic("membership/get", node=parts[3])
    return None


def error_payload(event_id: str, code: int, reason: str, timestamp_ms: int) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": timestamp_ms, "code": code, "reason": reason}


def member(device: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any]:
    """A membership entry: KubeEdge's id/name/description/state plus the specs a mapper needs."""
    metadata = device["metadata"]
    return {
        "id": device_id(metadata.get("namespace", "default"), metadata["name"]),
        "name": metadata["name"],
        "namespace": metadata.get("namespace", "default"),
        "description": (metadata.get("annotations") or {}).get("description", ""),
        "state": ((device.get("status") or {}).get("state")) or "",
        "spec": device.get("spec") or {},
        "model": (model or {}).get("spec") or {},
    }
