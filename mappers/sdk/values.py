"""Property values: typed in the driver, strings on the wire (as KubeEdge sends them).

A DeviceModel property has a ``type`` (INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES, STREAM); the twin carries it
lower-case in ``metadata.type``. Drivers return Python values; ``format_value`` turns them into the wire string,
``parse_value`` turns a desired string back into the value a driver writes. Both are pure.
"""

from __future__ import annotations

import math

Value = str | int | float | bool

INTEGER_TYPES = frozenset({"int"})
REAL_TYPES = frozenset({"float", "double"})
_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


def wire_type(model_type: object) -> str:
    """The twin's ``metadata.type`` for a model property type: lower-case, ``string`` when unset."""
    return model_type.lower() if isinstance(model_type, str) and model_type else "string"


def format_value(value: Value, type_name: str) -> str:
    """The wire string of a reading: ``true``/``false`` for booleans, integers without a fraction."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if type_name in INTEGER_TYPES and value.is_integer():
            return str(int(value))
        return repr(value)  # shortest text that reads back as the same float, like Go's %v
    return value


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_value(text: str, type_name: str) -> Value:
    """The typed value of a desired string. ``ValueError`` when it does not parse as the property's type."""
    if type_name in INTEGER_TYPES:
        try:
            return int(text.strip())
        except ValueError:
            number = _finite(text)
            if not number.is_integer():
                raise ValueError(f"not an integer: {text!r}") from None
            return int(number)
    if type_name in REAL_TYPES:
        return _finite(text)
    if type_name == "boolean":
        return parse_bool(text)
    return text


def check_range(value: Value, minimum: float | None, maximum: float | None) -> None:
    """``ValueError`` when a numeric value lies outside the model's ``minimum``/``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is above the maximum {maximum}")


def as_number(value: object) -> float | None:
    """A model's minimum/maximum (a number or a numeric string in KubeEdge's CRD), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return _finite(value)
        except ValueError:
            return None
    return None


def _finite(text: str) -> float:
    number = float(text.strip())
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {text!r}")
    return number
