from __future__ import annotations

import datetime as dt

import pytest
from asyncua import ua

from mappers.opcua import OpcuaTarget, from_node, node_id, to_variant
from mappers.sdk.errors import InvalidConfig


def test_desired_strings_become_the_nodes_own_type() -> None:
    assert to_variant("true", ua.VariantType.Boolean) is True
    assert to_variant("-5", ua.VariantType.Int16) == -5
    assert to_variant("42.5", ua.VariantType.Double) == 42.5
    assert to_variant("hello", ua.VariantType.String) == "hello"


@pytest.mark.parametrize(
    ("text", "variant", "reason"),
    [
        ("70000", ua.VariantType.Int16, "does not fit"),
        ("-1", ua.VariantType.Byte, "does not fit"),
        ("1.5", ua.VariantType.Int32, "needs an integer"),
        ("warm", ua.VariantType.Float, "needs a number"),
        ("x", ua.VariantType.Guid, "not supported"),
    ],
)
def test_values_the_node_cannot_hold_are_refused(text: str, variant: ua.VariantType, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        to_variant(text, variant)


def test_node_values_become_property_values() -> None:
    assert from_node(21.5) == 21.5
    assert from_node(ua.LocalizedText("warm")) == "warm"
    assert from_node(dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) == "2026-01-02T00:00:00+00:00"


def test_config() -> None:
    assert OpcuaTarget.parse({"url": "opc.tcp://127.0.0.1:4840/"}).timeout == 4.0
    assert node_id({"nodeID": "ns=2;i=2"}) == "ns=2;i=2"
    with pytest.raises(InvalidConfig, match="url"):
        OpcuaTarget.parse({"url": "http://x"})
    with pytest.raises(InvalidConfig, match="securityPolicy is not supported"):
        OpcuaTarget.parse({"url": "opc.tcp://h:4840", "securityPolicy": "Basic256Sha256"})
    with pytest.raises(InvalidConfig, match="nodeID"):
        node_id({})
