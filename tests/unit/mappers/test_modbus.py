"""Register ↔ value conversion of the modbus driver, without a device."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappers.modbus import ModbusTarget, RegisterVisitor
from mappers.sdk.errors import InvalidConfig


def visitor(**config: Any) -> RegisterVisitor:
    return RegisterVisitor.parse({"register": "HoldingRegister", "offset": 3, **config})


def test_defaults_follow_kubeedge() -> None:
    v = visitor()
    assert (v.table, v.offset, v.limit, v.scale, v.add, v.data_type) == (
        "HoldingRegister",
        3,
        1,
        Decimal(1),
        Decimal(0),
        "uint16",
    )
    assert (v.swap_bytes, v.swap_registers) == (False, False)
    assert RegisterVisitor.parse({"register": "CoilRegister"}).table == "Coil"
    assert RegisterVisitor.parse({"register": "DiscreteInputRegister"}).table == "DiscreteInput"
    assert visitor(scale=0).scale == 1  # KubeEdge's omitted scale


def test_value_is_raw_times_scale_plus_add() -> None:
    assert visitor(scale=0.1).decode([215], "float") == 21.5
    assert visitor(scale="0.1", add=-40).decode([615], "float") == 21.5
    assert visitor(scale=0.1, offset_value=-40).decode([615], "float") == 21.5
    assert visitor(scale=0.1).decode([3], "double") == 0.3  # decimal scaling: no 0.30000000000000004
    assert visitor().decode([215], "int") == 215
    assert visitor(scale=0.5).decode([3], "int") == 2  # rounded half to even
    assert visitor().decode([0], "boolean") is False
    assert visitor().decode([7], "boolean") is True
    assert visitor(scale=0.1).decode([215], "string") == "21.5"
    assert visitor().decode([215], "string") == "215"


def test_writes_reverse_the_scaling() -> None:
    assert visitor(scale=0.1).encode("42.5", "float") == [425]
    assert visitor(scale=0.1, add=-40).encode("21.5", "float") == [615]
    assert visitor().encode("true", "boolean") == [1]
    assert visitor(scale=0.1).encode("0.04", "float") == [0]  # rounds to the register's integer


def test_signed_wide_and_float_registers() -> None:
    assert visitor(dataType="int16").decode([0xFFFF], "int") == -1
    assert visitor(dataType="int16").encode("-2", "int") == [0xFFFE]
    assert visitor(limit=2).data_type == "uint32"
    assert visitor(limit=2).decode([0x0001, 0x0000], "int") == 65536
    assert visitor(dataType="float32").limit == 2
    assert visitor(dataType="float32").decode([0x41AC, 0x0000], "float") == 21.5
    assert visitor(dataType="float32").encode("21.5", "float") == [0x41AC, 0x0000]
    assert visitor(dataType="float32").decode([0x3DCC, 0xCCCD], "float") == 0.1  # not 0.10000000149011612


def test_swaps() -> None:
    assert visitor(isSwap=True).decode([0x3412], "int") == 0x1234
    assert visitor(limit=2, isRegisterSwap=True).decode([0x0000, 0x0001], "int") == 65536
    both = visitor(limit=2, isSwap=True, isRegisterSwap=True)
    assert both.decode([0x7856, 0x3412], "int") == 0x12345678
    assert both.encode(str(0x12345678), "int") == [0x7856, 0x3412]


@given(
    raw=st.integers(0, 2**32 - 1),
    swap=st.booleans(),
    register_swap=st.booleans(),
    scale=st.sampled_from(["1", "0.1", "0.01", "2", "0.5"]),
    add=st.sampled_from(["0", "-40", "12.5"]),
)
def test_what_is_read_writes_back_to_the_same_registers(
    raw: int, swap: bool, register_swap: bool, scale: str, add: str
) -> None:
    v = visitor(limit=2, isSwap=swap, isRegisterSwap=register_swap, scale=scale, add=add)
    words = v.encode(str(Decimal(raw) * Decimal(scale) + Decimal(add)), "double")
    assert isinstance(words, list)
    value = v.decode(words, "double")
    assert isinstance(value, float)
    assert v.encode(repr(value), "double") == words


def test_coils_are_booleans() -> None:
    coil = RegisterVisitor.parse({"register": "Coil", "offset": 2})
    assert coil.is_bit and coil.writable
    assert coil.decode([True], "boolean") is True
    assert coil.decode([False], "int") == 0
    assert coil.encode("true", "boolean") is True
    assert coil.encode("0", "boolean") is False


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"register": "Holding"}, "register must be one of"),
        ({"register": "HoldingRegister", "offset": -1}, "0..65535"),
        ({"register": "HoldingRegister", "offset": "x"}, "offset must be an integer"),
        ({"register": "HoldingRegister", "limit": 3}, "1, 2 or 4"),
        ({"register": "HoldingRegister", "dataType": "float32", "limit": 1}, "takes 2 registers"),
        ({"register": "HoldingRegister", "dataType": "int8"}, "dataType must be one of"),
        ({"register": "Coil", "limit": 2}, "limit must be 1"),
        ({"register": "HoldingRegister", "scale": "abc"}, "scale must be a number"),
        ({"register": "HoldingRegister", "add": 1, "offset_value": 1}, "either add or offset_value"),
        ({"register": "HoldingRegister", "isSwap": 3}, "isSwap must be true or false"),
    ],
)
def test_bad_visitors_are_refused(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        RegisterVisitor.parse(config)


@pytest.mark.parametrize(
    ("register", "text", "reason"),
    [
        ({"register": "InputRegister"}, "1", "read-only"),
        ({"register": "DiscreteInput"}, "true", "read-only"),
        ({"register": "HoldingRegister"}, "70000", "cannot hold"),
        ({"register": "HoldingRegister"}, "-1", "cannot hold"),
        ({"register": "HoldingRegister"}, "warm", "not a number"),
        ({"register": "HoldingRegister"}, "Infinity", "not a finite number"),
    ],
)
def test_writes_the_register_cannot_take_are_refused(register: dict[str, Any], text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RegisterVisitor.parse(register).encode(text, "int")


def test_target() -> None:
    assert ModbusTarget.parse({"host": "10.0.0.5", "port": 1502, "slaveID": 3}) == ModbusTarget(
        "10.0.0.5", 1502, 3, 3.0
    )
    assert ModbusTarget.parse({"ip": "10.0.0.5"}).port == 502  # KubeEdge's key
    with pytest.raises(InvalidConfig, match="host"):
        ModbusTarget.parse({})
