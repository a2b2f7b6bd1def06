"""DeviceTwin's pure part (edgecore/devicetwin/model.py): requests checked whole, KubeEdge's payload shapes."""

from __future__ import annotations

import pytest

from edgecore.devicetwin.model import (
    NodeDevice,
    Rejection,
    decode,
    msg_twin,
    reported_state,
    reported_values,
    twin_document,
    with_report,
)
from edgecore.devicetwin.store import TwinRow
from tests.unit.devicetwin.objects import thermometer, thermometer_model

DEVICE = NodeDevice.build(thermometer("t1"), thermometer_model())


def update(**values: object) -> dict[str, object]:
    return {"event_id": "e", "twin": {prop: {"actual": {"value": value}} for prop, value in values.items()}}


def test_a_report_is_checked_against_the_model_and_numbers_become_strings() -> None:
    assert reported_values(DEVICE, update(temperature=21.5, setpoint="7", enabled=True)) == {
        "temperature": "21.5",
        "setpoint": "7",
        "enabled": "true",
    }


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (update(temperature="21", humidity="3"), 400, "device default/t1 has no property 'humidity'"),
        (update(setpoint="warm"), 400, "property 'setpoint'"),
        ({"twin": {}}, 400, "twin must be a non-empty object"),
        ({"twin": {"temperature": {"expected": {"value": "1"}}}}, 400, "property 'temperature' has no actual value"),
    ],
)
def test_one_bad_property_refuses_the_whole_report(request_: dict[str, object], code: int, reason: str) -> None:
    with pytest.raises(Rejection) as refused:
        reported_values(DEVICE, request_)
    assert refused.value.code == code and reason in refused.value.reason


def test_a_device_whose_model_is_missing_is_a_404() -> None:
    orphan = NodeDevice.build(thermometer("t2"), None)
    with pytest.raises(Rejection) as refused:
        reported_values(orphan, update(temperature="1"))
    assert refused.value.code == 404


def test_states_and_payloads_are_bounded() -> None:
    assert reported_state({"state": "online"}) == "online"
    with pytest.raises(Rejection, match="at most 64 bytes"):
        reported_state({"state": "x" * 65})
    with pytest.raises(Rejection, match="not a JSON object"):
        decode(b"[1, 2]")


def test_reported_versions_count_up_and_the_twin_has_kubeedges_shape() -> None:
    first = with_report(None, DEVICE.id, "setpoint", "7", 1000)
    second = with_report(first, DEVICE.id, "setpoint", "8", 2000)
    assert (first.reported_version, second.reported_version) == (1, 2)
    desired = TwinRow(DEVICE.id, "setpoint", desired="9", desired_version=3, desired_ts=500)
    reported = with_report(desired, DEVICE.id, "setpoint", "8", 2000)
    assert msg_twin(DEVICE, "setpoint", reported) == {
        "metadata": {"type": "int"},
        "expected": {"value": "9", "metadata": {"timestamp": 500}},
        "expected_version": {"cloud": 3, "edge": 0},
        "actual": {"value": "8", "metadata": {"timestamp": 2000}},
        "actual_version": {"cloud": 0, "edge": 1},
    }
    document = twin_document(DEVICE, {"setpoint": (None, first)}, event_id="e", now_ms=1000)
    assert document["twin"]["setpoint"]["last"] is None
    assert document["twin"]["setpoint"]["current"]["actual"]["value"] == "7"
