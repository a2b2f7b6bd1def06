from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappers.sdk.values import as_number, check_range, format_value, parse_value, wire_type


def test_wire_type_is_the_model_type_in_lower_case() -> None:
    assert wire_type("FLOAT") == "float"
    assert wire_type("BOOLEAN") == "boolean"
    assert wire_type(None) == "string"
    assert wire_type("") == "string"


@pytest.mark.parametrize(
    ("value", "type_name", "wire"),
    [
        (True, "boolean", "true"),
        (False, "boolean", "false"),
        (42, "int", "42"),
        (42.0, "int", "42"),
        (21.5, "float", "21.5"),
        (0.1 + 0.2, "double", "0.30000000000000004"),
        (23.0, "float", "23.0"),
        ("on", "string", "on"),
    ],
)
def test_format_value(value: str | int | float | bool, type_name: str, wire: str) -> None:
    assert format_value(value, type_name) == wire


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_reading_parses_back_to_the_same_float(x: float) -> None:
    assert parse_value(format_value(x, "double"), "double") == x


@given(st.integers(-(2**70), 2**70))
def test_an_int_reading_parses_back(x: int) -> None:
    assert parse_value(format_value(x, "int"), "int") == x


def test_parse_value_by_type() -> None:
    assert parse_value("42", "int") == 42
    assert parse_value("42.0", "int") == 42
    assert parse_value(" 1.5 ", "float") == 1.5
    assert parse_value("TRUE", "boolean") is True
    assert parse_value("0", "boolean") is False
    assert parse_value("anything", "string") == "anything"


@pytest.mark.parametrize(("text", "type_name"), [("4.5", "int"), ("x", "int"), ("nan", "float"), ("maybe", "boolean")])
def test_parse_value_refuses_what_the_type_cannot_hold(text: str, type_name: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_value(text, type_name)


def test_check_range() -> None:
    check_range(5, 0, 10)
    check_range("text", 0, 1)
    check_range(True, 5, 10)  # booleans are not numbers here
    with pytest.raises(ValueError, match="below the minimum"):
        check_range(-1, 0, None)
    with pytest.raises(ValueError, match="above the maximum"):
        check_range(10.5, None, 10)


def test_as_number_reads_kubeedge_limits() -> None:
    assert as_number("100") == 100.0
    assert as_number(3) == 3.0
    assert as_number("") is None
    assert as_number("n/a") is None
    assert as_number(True) is None
