"""Twin values: strings on the wire, checked against the DeviceModel property's type."""

from __future__ import annotations

import math
import re

from common.devices import MAX_VALUE_BYTES

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLEANS = frozenset({"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"})  # Go's
_INT64 = 2**63


class InvalidValue(ValueError):
    """The value cannot be this property's; the message says why, for the mapper."""


def wire_value(raw: object) -> str:
    """A reported value as the string it is stored as; JSON numbers and booleans are accepted as such."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return repr(raw)
    raise InvalidValue(f"value must be a string, not {type(raw).__name__}")


def check_value(value: str, kind: str) -> None:
    """Raise InvalidValue unless ``value`` fits ``kind`` (INT, FLOAT, ...) and the size limit."""
    size = len(value.encode())
    if size > MAX_VALUE_BYTES:
        raise InvalidValue(f"value is {size} bytes, the limit is {MAX_VALUE_BYTES}")
    kind = kind.upper()
    if kind == "INT":
        if not _INT.fullmatch(value) or not -_INT64 <= int(value) < _INT64:
            raise InvalidValue(f"value {value!r} is not an INT")
    elif kind in ("FLOAT", "DOUBLE"):
        if not _FLOAT.fullmatch(value) or not math.isfinite(float(value)):
            raise InvalidValue(f"value {value!r} is not a {kind}")
    elif kind == "BOOLEAN" and value not in _BOOLEANS:
        raise InvalidValue(f"value {value!r} is not a BOOLEAN")
    # STRING, BYTES, STREAM and types this version does not know: any string
