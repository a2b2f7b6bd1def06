"""DeviceTwin's decisions with a real SQLite store and recording publishers (no broker: that is
tests/integration/test_devicetwin.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from common import devices as topics
from common.devices import MAX_PAYLOAD_BYTES, MAX_VALUE_BYTES
from common.messages import Operation
from edgecore.devicetwin import DeviceTwin
from edgecore.devicetwin.values import InvalidValue, check_value, wire_value
from edgecore.metamanager.store import Change, MetaStore
from tests.store import put
from tests.unit.devicetwin.objects import NAMESPACE, NODE, Upstream, thermometer, thermometer_model

T1 = f"{NAMESPACE}/t1"


class Local:
    """A stand-in for ``EventBus.publish``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        self.items.append((topic, payload))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload in self.items if t == topic]


@pytest.fixture
async def parts(store: MetaStore) -> tuple[DeviceTwin, Local, Upstream]:
    await put(store, "devicemodel", thermometer_model())
    await put(store, "device", thermometer("t1"))
    await put(store, "device", thermometer("other", node="edge-elsewhere"))
    local, upstream = Local(), Upstream()
    twin = DeviceTwin(
        node_name=NODE, store=store, publish_upstream=upstream, publish_local=local, clock=lambda: 1_700_000_000_000
    )
    await twin.reload(startup=True)
    # a desired value new to the twin table goes to the mapper at once, even at start-up
    assert [(t, p["delta"]) for t, p in local.items] == [(topics.twin_update_delta(T1), {"setpoint": "21"})]
    local.items.clear()
    return twin, local, upstream


def update(prop: str, value: object, event_id: str = "e1") -> bytes:
    return orjson.dumps({"event_id": event_id, "timestamp": 1, "twin": {prop: {"actual": {"value": value}}}})


async def test_membership_lists_the_nodes_devices_with_spec_and_model(
    parts: tuple[DeviceTwin, Local, Upstream],
) -> None:
    twin, local, _ = parts
    await twin.handle(topics.membership_get(NODE), b'{"event_id": "m1"}')
    await twin.handle(topics.membership_get("edge-elsewhere"), b'{"event_id": "m2"}')  # not ours: no answer
    (result,) = local.on(topics.membership_get_result(NODE))
    assert result["event_id"] == "m1"
    (device,) = result["devices"]
    assert device["id"] == T1 and device["name"] == "t1" and device["namespace"] == NAMESPACE
    assert device["spec"]["protocol"]["protocolName"] == "modbus"
    assert [p["name"] for p in device["model"]["properties"]] == ["temperature", "setpoint", "enabled", "label"]
    # and the desired values, for a mapper that has just started
    (delta,) = local.on(topics.twin_update_delta(T1))
    assert delta["delta"] == {"setpoint": "21"}
    assert delta["twin"]["setpoint"]["expected"]["value"] == "21"
    assert not local.on(topics.membership_get_result("edge-elsewhere"))


async def test_a_valid_report_is_stored_echoed_documented_and_sent_upstream(
    parts: tuple[DeviceTwin, Local, Upstream],
) -> None:
    twin, local, upstream = parts
    await twin.handle(topics.twin_update(T1), update("temperature", "23.5"))
    await twin.handle(topics.twin_update(T1), update("temperature", 24, event_id="e2"))  # a JSON number is taken
    assert [r.reported for r in [(await twin.twins.get(T1))["temperature"]]] == ["24"]
    row = (await twin.twins.get(T1))["temperature"]
    assert row.reported_version == 2 and row.desired is None and row.desired_version == 0
    results = local.on(topics.twin_update_result(T1))
    assert [r["event_id"] for r in results] == ["e1", "e2"]
    assert results[0]["twin"] == {"temperature": {"actual": {"value": "23.5"}}}
    documents = local.on(topics.twin_update_document(T1))
    assert documents[0]["twin"]["temperature"]["last"] is None
    assert documents[1]["twin"]["temperature"]["last"]["actual"]["value"] == "23.5"
    assert documents[1]["twin"]["temperature"]["current"]["actual"] == {
        "value": "24",
        "metadata": {"timestamp": 1_700_000_000_000},
    }
    assert upstream.items[-1] == {
        "key": f"devicetwin/{NAMESPACE}/t1/temperature",
        "group": "twin",
        "operation": "update",
        "resource": f"{NAMESPACE}/devicetwin/t1",
        "content": {
            "twins": [
                {
                    "propertyName": "temperature",
                    "reported": {"value": "24", "metadata": {"timestamp": "1700000000000", "type": "float"}},
                    "observedDesired": {"value": ""},
                }
            ]
        },
    }
    # a report of a property with a desired value carries it as observedDesired
    await twin.handle(topics.twin_update(T1), update("setpoint", "21"))
    assert upstream.items[-1]["content"]["twins"][0]["observedDesired"] == {"value": "21"}
    assert upstream.keys() == [f"devicetwin/{NAMESPACE}/t1/{p}" for p in ("temperature", "temperature", "setpoint")]


@pytest.mark.parametrize(
    ("device", "payload", "code", "reason"),
    [
        (T1, b"{not json", 400, "not JSON"),
        (T1, b"[1, 2]", 400, "not a JSON object"),
        (T1, b" " * (MAX_PAYLOAD_BYTES + 1), 400, "limit is"),
        (f"{NAMESPACE}/ghost", update("temperature", "1"), 404, "not a device of node"),
        (f"{NAMESPACE}/other", update("temperature", "1"), 404, "not a device of node"),  # another node's
        (T1, update("humidity", "1"), 400, "no property 'humidity'"),
        (T1, update("setpoint", "12.5"), 400, "not an INT"),
        (T1, update("setpoint", "twelve"), 400, "not an INT"),
        (T1, update("temperature", "nan"), 400, "not a FLOAT"),
        (T1, update("enabled", "yes"), 400, "not a BOOLEAN"),
        (T1, update("label", "x" * (MAX_VALUE_BYTES + 1)), 400, "limit is 512"),
        (T1, update("label", {"nested": 1}), 400, "must be a string"),
        (T1, orjson.dumps({"event_id": "e1", "twin": {}}), 400, "non-empty object"),
        (T1, orjson.dumps({"event_id": "e1", "twin": {"temperature": {"expected": {"value": "1"}}}}), 400, "actual"),
    ],
)
async def test_an_invalid_report_is_refused_and_changes_nothing(
    parts: tuple[DeviceTwin, Local, Upstream], device: str, payload: bytes, code: int, reason: str
) -> None:
    twin, local, upstream = parts
    before = await twin.twins.get_all()
    with capture_logs() as logs:
        await twin.handle(topics.twin_update(device), payload)
    (error,) = local.on(topics.twin_update_result(device))
    assert error["code"] == code and reason in error["reason"], error
    assert error["event_id"] == ("e1" if payload.startswith(b"{") and b"event_id" in payload else "")
    assert not upstream.items
    assert not local.on(topics.twin_update_document(device))
    assert await twin.twins.get_all() == before
    (line,) = [entry for entry in logs if entry["event"] == "twin_rejected"]
    assert line["device"] == device and reason in line["reason"] and line["log_level"] == "warning"


async def test_a_report_with_one_bad_property_stores_none(parts: tuple[DeviceTwin, Local, Upstream]) -> None:
    twin, local, upstream = parts
    payload = {
        "event_id": "e9",
        "twin": {"temperature": {"actual": {"value": "20"}}, "setpoint": {"actual": {"value": "x"}}},
    }
    await twin.handle(topics.twin_update(T1), orjson.dumps(payload))
    assert local.on(topics.twin_update_result(T1))[0]["code"] == 400
    assert not upstream.items
    assert "temperature" not in await twin.twins.get(T1)


async def test_a_new_desired_value_is_stored_with_a_new_version_and_sent_as_a_delta(
    store: MetaStore, parts: tuple[DeviceTwin, Local, Upstream]
) -> None:
    twin, local, _ = parts
    row = (await twin.twins.get(T1))["setpoint"]
    assert (row.desired, row.desired_version) == ("21", 1)

    await put(store, "device", thermometer("t1", setpoint="24", rv=2), Operation.UPDATE)
    await twin.reload()
    (delta,) = local.on(topics.twin_update_delta(T1))
    assert delta["delta"] == {"setpoint": "24"}
    assert delta["twin"]["setpoint"]["expected"]["value"] == "24"
    assert delta["twin"]["setpoint"]["expected_version"] == {"cloud": 2, "edge": 0}
    assert set(delta["twin"]) == {"temperature", "setpoint", "enabled", "label"}
    assert not local.on(topics.membership_updated(NODE))  # only the desired value changed
    row = (await twin.twins.get(T1))["setpoint"]
    assert (row.desired, row.desired_version) == ("24", 2)

    # the same value again (a resync, an unrelated change): no new version, no delta
    await put(store, "device", thermometer("t1", setpoint="24", rv=3), Operation.UPDATE)
    await twin.reload()
    assert len(local.on(topics.twin_update_delta(T1))) == 1
    assert (await twin.twins.get(T1))["setpoint"].desired_version == 2

    # a report does not touch the desired side
    await twin.handle(topics.twin_update(T1), update("setpoint", "23"))
    row = (await twin.twins.get(T1))["setpoint"]
    assert (row.desired, row.desired_version, row.reported, row.reported_version) == ("24", 2, "23", 1)


async def test_a_restart_announces_nothing_already_known(
    store: MetaStore, parts: tuple[DeviceTwin, Local, Upstream]
) -> None:
    local = Local()
    again = DeviceTwin(node_name=NODE, store=store, publish_upstream=Upstream(), publish_local=local)
    await again.reload(startup=True)
    assert local.items == []
    assert set(again.devices) == {T1}
    assert (await again.twins.get(T1))["setpoint"].desired_version == 1


async def test_reconnecting_resends_desired_values_not_yet_reported(parts: tuple[DeviceTwin, Local, Upstream]) -> None:
    twin, local, _ = parts
    await twin.resend_pending()
    assert [d["delta"] for d in local.on(topics.twin_update_delta(T1))] == [{"setpoint": "21"}]
    await twin.handle(topics.twin_update(T1), update("setpoint", "21"))
    await twin.resend_pending()
    assert len(local.on(topics.twin_update_delta(T1))) == 1  # reported back: nothing to resend


async def test_devices_added_updated_and_removed_are_announced(
    store: MetaStore, parts: tuple[DeviceTwin, Local, Upstream]
) -> None:
    twin, local, _ = parts
    await twin.handle(topics.twin_update(T1), update("temperature", "20"))
    await put(store, "device", thermometer("t2", setpoint=None))
    await twin.reload()
    (added,) = local.on(topics.membership_updated(NODE))
    assert [d["id"] for d in added["added_devices"]] == [f"{NAMESPACE}/t2"] and added["removed_devices"] == []
    assert not local.on(topics.twin_update_delta(f"{NAMESPACE}/t2"))  # nothing desired

    changed = thermometer("t2", setpoint=None, rv=2)
    changed["spec"]["protocol"]["configData"]["port"] = 5021
    await put(store, "device", changed, Operation.UPDATE)
    await twin.reload()
    assert [d["id"] for d in local.on(topics.membership_updated(NODE))[1]["added_devices"]] == [f"{NAMESPACE}/t2"]

    await put(store, "device", thermometer("t1", rv=9), Operation.DELETE)
    await twin.reload()
    removed = local.on(topics.membership_updated(NODE))[2]
    assert [d["id"] for d in removed["removed_devices"]] == [T1] and removed["added_devices"] == []
    assert T1 not in await twin.twins.get_all()  # its twins go with it
    await twin.handle(topics.twin_update(T1), update("temperature", "20"))
    assert local.on(topics.twin_update_result(T1))[-1]["code"] == 404


async def test_store_changes_queue_one_reload(store: MetaStore, parts: tuple[DeviceTwin, Local, Upstream]) -> None:
    twin, _, _ = parts
    change = Change(Operation.UPDATE, "uid-t1", f"{NAMESPACE}/device/t1", "2", {})  # type: ignore[arg-type]
    pod = Change(Operation.UPDATE, "uid-p", f"{NAMESPACE}/pod/p", "2", {})  # type: ignore[arg-type]
    twin.on_changes([pod])
    assert len(twin._inbox) == 0
    twin.on_changes([change])
    twin.on_changes([change, pod])
    assert len(twin._inbox) == 1


async def test_twin_get_and_state_update(parts: tuple[DeviceTwin, Local, Upstream]) -> None:
    twin, local, upstream = parts
    await twin.handle(topics.twin_update(T1), update("temperature", "19.5"))
    await twin.handle(topics.twin_get(T1), b'{"event_id": "g1"}')
    (got,) = local.on(topics.twin_get_result(T1))
    assert got["event_id"] == "g1"
    assert got["twin"]["temperature"]["actual"]["value"] == "19.5"
    assert got["twin"]["setpoint"]["expected"]["value"] == "21" and "actual" not in got["twin"]["setpoint"]
    assert got["twin"]["enabled"] == {"metadata": {"type": "boolean"}}

    upstream.items.clear()
    await twin.handle(topics.state_update(T1), b'{"event_id": "s1", "state": "online"}')
    assert upstream.items == [
        {
            "key": f"devicestate/{NAMESPACE}/t1",
            "group": "twin",
            "operation": "update",
            "resource": f"{NAMESPACE}/devicestate/t1",
            "content": {"state": "online", "lastOnlineTime": "2023-11-14T22:13:20Z"},
        }
    ]
    assert local.on(topics.state_update_result(T1)) == [
        {"event_id": "s1", "timestamp": 1_700_000_000_000, "state": "online"}
    ]
    await twin.handle(topics.membership_get(NODE), b"{}")
    assert local.on(topics.membership_get_result(NODE))[0]["devices"][0]["state"] == "online"

    with capture_logs() as logs:
        await twin.handle(topics.state_update(T1), b'{"event_id": "s2", "state": 7}')
    assert local.on(topics.state_update_result(T1))[-1]["code"] == 400
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["state_rejected"]
    assert len(upstream.items) == 1


async def test_a_full_inbox_drops_mapper_messages_not_store_changes(store: MetaStore) -> None:
    twin = DeviceTwin(node_name=NODE, store=store, publish_upstream=Upstream(), publish_local=Local(), max_pending=2)
    for _ in range(5):
        twin.submit(topics.twin_get(T1), b"{}")
    twin.on_changes([Change(Operation.INSERT, "u", f"{NAMESPACE}/devicemodel/m", "1", {})])  # type: ignore[arg-type]
    twin.on_bus_connection(True)
    assert twin.dropped == 3 and len(twin._inbox) == 4


@pytest.mark.parametrize(
    ("value", "kind", "ok"),
    [
        ("42", "INT", True),
        ("-42", "int", True),
        ("4.2", "INT", False),
        ("1_000", "INT", False),
        (str(2**63), "INT", False),
        ("4.2", "FLOAT", True),
        ("-1e-3", "DOUBLE", True),
        (".5", "FLOAT", True),
        ("inf", "FLOAT", False),
        ("1e999", "DOUBLE", False),
        ("true", "BOOLEAN", True),
        ("F", "BOOLEAN", True),
        ("on", "BOOLEAN", False),
        ("anything at all", "STRING", True),
        ("x" * MAX_VALUE_BYTES, "STRING", True),
        ("é" * (MAX_VALUE_BYTES // 2 + 1), "STRING", False),  # the limit is in bytes
    ],
)
def test_values_are_checked_against_the_model_type(value: str, kind: str, ok: bool) -> None:
    if ok:
        check_value(value, kind)
    else:
        with pytest.raises(InvalidValue):
            check_value(value, kind)


def test_wire_values() -> None:
    assert [wire_value(v) for v in ("a", 1, 2.5, True, False)] == ["a", "1", "2.5", "true", "false"]
    with pytest.raises(InvalidValue):
        wire_value(None)


async def test_a_batch_stores_once_and_replies_in_order(parts: tuple[DeviceTwin, Local, Upstream]) -> None:
    twin, local, upstream = parts
    await twin.handle_batch(
        [
            (topics.twin_update(T1), update("temperature", "20", "a")),
            (topics.twin_update(T1), update("temperature", "hot", "b")),  # rejected; the others go on
            (topics.twin_update(T1), update("temperature", "21", "c")),
            (topics.twin_update(T1), update("temperature", "22", "d")),
        ]
    )
    results = local.on(topics.twin_update_result(T1))
    assert [r["event_id"] for r in results] == ["a", "b", "c", "d"]
    assert [r.get("code") for r in results] == [None, 400, None, None]
    # only the latest value per property travels, once
    assert [i["content"]["twins"][0]["reported"]["value"] for i in upstream.items] == ["22"]
    row = (await twin.twins.get(T1))["temperature"]
    assert (row.reported, row.reported_version) == ("22", 3)
    documents = local.on(topics.twin_update_document(T1))
    assert [d["twin"]["temperature"]["current"]["actual_version"]["edge"] for d in documents] == [1, 2, 3]


async def test_a_batch_that_cannot_be_stored_changes_nothing_and_replies_nothing(
    parts: tuple[DeviceTwin, Local, Upstream],
) -> None:
    twin, local, _ = parts
    await twin.handle(topics.twin_update(T1), update("temperature", "20"))
    local.items.clear()

    async def broken(*messages: object) -> None:
        raise OSError("disk full")

    twin._upstream = broken
    with pytest.raises(OSError, match="disk full"):
        await twin.handle(topics.twin_update(T1), update("temperature", "30"))
    assert local.items == []
    assert (await twin.twins.get(T1))["temperature"].reported == "20"
    await twin.handle(topics.twin_get(T1), b'{"event_id": "g"}')  # the in-memory twins agree with the disk
    assert local.on(topics.twin_get_result(T1))[0]["twin"]["temperature"]["actual"]["value"] == "20"
