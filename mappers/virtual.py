"""Simulated sensors, for demos and tests: no hardware, values from a formula.

A property's visitor ``configData``: ``{"kind": "sine" | "random" | "constant" | "counter", "min", "max",
"period", "value", "step"}``:

- ``sine``: between ``min`` and ``max`` over ``period`` seconds (default 0..100 over 60 s);
- ``random``: uniform between ``min`` and ``max``;
- ``constant``: ``value`` (default ``min``);
- ``counter``: ``min``, then ``step`` (default 1) more on each read, back to ``min`` after ``max``.

The number is then shaped by the model's type: ``int`` rounds, ``string`` is the number's text, ``boolean`` is
true in the upper half of a sine or random range and for a constant or counter that is not 0. A written value
is held and read back until the next write.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mappers.sdk.errors import InvalidConfig
from mappers.sdk.plan import Member
from mappers.sdk.values import INTEGER_TYPES, REAL_TYPES, Value, as_number, format_value, parse_value, wire_type

KINDS = ("sine", "random", "constant", "counter")


@dataclass(frozen=True)
class Signal:
    kind: str = "sine"
    low: float = 0.0
    high: float = 100.0
    period: float = 60.0
    constant: float | None = None
    step: float = 1.0

    @classmethod
    def parse(cls, config: dict[str, Any]) -> Signal:
        kind = config.get("kind", "sine")
        if kind not in KINDS:
            raise InvalidConfig(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        low = _number(config, "min", 0.0)
        high = _number(config, "max", 100.0)
        if high < low:
            raise InvalidConfig(f"max {high} is below min {low}")
        period = _number(config, "period", 60.0)
        if period <= 0:
            raise InvalidConfig(f"period must be positive, got {period}")
        raw = config.get("value")
        constant = float(raw) if isinstance(raw, bool) else as_number(raw)
        return cls(kind, low, high, period, constant, _number(config, "step", 1.0))

    def sample(self, elapsed: float, count: int, rng: random.Random) -> float:
        """The signal's value ``elapsed`` seconds after start, at its ``count``-th read (from 0)."""
        span = self.high - self.low
        if self.kind == "sine":
            return self.low + span * (1 + math.sin(2 * math.pi * elapsed / self.period)) / 2
        if self.kind == "random":
            return rng.uniform(self.low, self.high)
        if self.kind == "constant":
            return self.low if self.constant is None else self.constant
        steps = int(span // self.step) + 1 if self.step > 0 else 1
        return self.low + (count % steps) * self.step

    def shape(self, number: float, type_name: str) -> Value:
        """The number as the property's type."""
        if type_name in INTEGER_TYPES:
            return round(number)
        if type_name in REAL_TYPES:
            return number
        if type_name == "boolean":
            if self.kind in ("constant", "counter"):
                return number != 0
            return number >= self.low + (self.high - self.low) / 2
        return format_value(number, type_name)


class VirtualDriver:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - simulated readings
        self._started = 0.0
        self._types: dict[str, str] = {}
        self._signals: dict[str, Signal] = {}
        self._reads: dict[str, int] = {}
        self._written: dict[str, Value] = {}
        self._running = False

    async def init(self, device: Member) -> None:
        model = (device.get("model") or {}).get("properties") or []
        self._types = {p["name"]: wire_type(p.get("type")) for p in model if isinstance(p, dict) and "name" in p}
        self._started = self._clock()
        self._running = True

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        if prop in self._written:
            return self._written[prop]
        signal = self._signals.get(prop)
        if signal is None:
            signal = self._signals[prop] = Signal.parse(visitor)
        count = self._reads.get(prop, 0)
        self._reads[prop] = count + 1
        return signal.shape(signal.sample(self._clock() - self._started, count, self._rng), self._type(prop))

    async def write(self, prop: str, visitor: dict[str, Any], value: str) -> None:
        self._written[prop] = parse_value(value, self._type(prop))

    async def health(self) -> bool:
        return self._running

    async def stop(self) -> None:
        self._running = False

    def _type(self, prop: str) -> str:
        return self._types.get(prop, "double")


def _number(config: dict[str, Any], key: str, default: float) -> float:
    if key not in config:
        return default
    number = as_number(config[key])
    if number is None:
        raise InvalidConfig(f"{key} must be a number, got {config[key]!r}")
    return number
