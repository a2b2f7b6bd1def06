from __future__ import annotations

from typing import Any

import pytest

from mappers.sdk.errors import InvalidConfig
from mappers.sdk.plan import MIN_CYCLE_MS, plan_device, protocol_name


def entry(**spec: Any) -> dict[str, Any]:
    return {
        "id": "default/thermo",
        "name": "thermo",
        "namespace": "default",
        "state": "",
        "spec": {"protocol": {"protocolName": "modbus", "configData": {"host": "127.0.0.1"}}, **spec},
        "model": {
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "minimum": "-40", "maximum": 125},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
            ]
        },
    }


def test_a_property_takes_its_type_access_and_limits_from_the_model() -> None:
    plan = plan_device(
        entry(
            properties=[
                {
                    "name": "temperature",
                    "collectCycle": 500,
                    "visitors": {"protocolName": "modbus", "configData": {"register": "InputRegister"}},
                },
                {"name": "setpoint", "desired": {"value": "20"}, "reportCycle": 2000, "reportToCloud": False},
            ]
        )
    )
    assert plan.id == "default/thermo"
    assert plan.protocol == "modbus"
    temperature, setpoint = plan.properties
    assert (temperature.type, temperature.writable, temperature.minimum, temperature.maximum) == (
        "float",
        False,
        -40.0,
        125.0,
    )
    assert temperature.visitor == {"register": "InputRegister"}
    assert (temperature.collect_s, temperature.report_s) == (0.5, 0.5)  # reportCycle defaults to collectCycle
    assert temperature.report_to_cloud is True  # unless it says false
    assert temperature.desired is None
    assert (setpoint.type, setpoint.writable, setpoint.desired) == ("int", True, "20")
    assert (setpoint.collect_s, setpoint.report_s, setpoint.report_to_cloud) == (1.0, 2.0, False)


def test_a_property_missing_from_the_model_is_a_writable_string() -> None:
    (prop,) = plan_device(entry(properties=[{"name": "label"}])).properties
    assert (prop.type, prop.writable) == ("string", True)


def test_tiny_cycles_are_raised_to_the_floor() -> None:
    (prop,) = plan_device(entry(properties=[{"name": "temperature", "collectCycle": 1}])).properties
    assert prop.collect_s == MIN_CYCLE_MS / 1000


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "thermo"}, "namespace"),
        ({"id": "default/+"}, "wildcard"),
        ({"spec": {"properties": []}}, "protocolName"),
        ({"spec": {"protocol": {"protocolName": "modbus"}, "properties": {"name": "x"}}}, "must be a list"),
        (
            {"spec": {"protocol": {"protocolName": "modbus"}, "properties": [{"name": "a"}, {"name": "a"}]}},
            "repeat",
        ),
        (
            {
                "spec": {
                    "protocol": {"protocolName": "modbus"},
                    "properties": [{"name": "a", "visitors": {"protocolName": "opcua"}}],
                }
            },
            "visitor is for 'opcua'",
        ),
        (
            {"spec": {"protocol": {"protocolName": "modbus"}, "properties": [{"name": "a", "collectCycle": "often"}]}},
            "milliseconds",
        ),
    ],
)
def test_a_malformed_entry_is_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        plan_device({**entry(), **change})


def test_protocol_name() -> None:
    assert protocol_name(entry()) == "modbus"
    assert protocol_name({"spec": {}}) == ""
    assert protocol_name("not a dict") == ""


def test_the_state_is_reported_on_the_devices_state_report_cycle() -> None:
    assert plan_device(entry(properties=[])).state_report_s == 60.0
    assert plan_device(entry(properties=[], stateReport={"reportCycle": 5000})).state_report_s == 5.0
