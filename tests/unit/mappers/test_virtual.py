from __future__ import annotations

import random
from typing import Any

import pytest

from mappers.sdk.errors import InvalidConfig
from mappers.virtual import Signal, VirtualDriver


def test_sine_spans_min_to_max_over_its_period() -> None:
    sine = Signal.parse({"kind": "sine", "min": 10, "max": 30, "period": 4})
    rng = random.Random(0)
    assert sine.sample(0, 0, rng) == pytest.approx(20)
    assert sine.sample(1, 0, rng) == pytest.approx(30)
    assert sine.sample(3, 0, rng) == pytest.approx(10)


def test_random_stays_in_range() -> None:
    signal = Signal.parse({"kind": "random", "min": -1, "max": 1})
    rng = random.Random(1)
    assert all(-1 <= signal.sample(0, i, rng) <= 1 for i in range(200))


def test_counter_steps_and_wraps() -> None:
    counter = Signal.parse({"kind": "counter", "min": 1, "max": 3})
    assert [counter.sample(0, i, random.Random()) for i in range(5)] == [1, 2, 3, 1, 2]


def test_shape_by_type() -> None:
    signal = Signal.parse({"kind": "sine", "min": 0, "max": 10})
    assert signal.shape(7.6, "int") == 8
    assert signal.shape(7.6, "boolean") is True
    assert signal.shape(2.0, "boolean") is False
    assert signal.shape(7.5, "string") == "7.5"
    assert Signal.parse({"kind": "constant", "value": True}).shape(1.0, "boolean") is True


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"kind": "square"}, "kind must be one of"),
        ({"min": 5, "max": 1}, "below min"),
        ({"period": 0}, "period must be positive"),
        ({"min": "low"}, "min must be a number"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        Signal.parse(config)


async def test_writable_properties_hold_what_was_written() -> None:
    now = [100.0]
    driver = VirtualDriver(clock=lambda: now[0], rng=random.Random(0))
    await driver.init(
        {
            "id": "default/v",
            "spec": {},
            "model": {"properties": [{"name": "level", "type": "INT"}, {"name": "on", "type": "BOOLEAN"}]},
        }
    )
    assert await driver.read("level", {"kind": "constant", "value": 3}) == 3
    await driver.write("level", {}, "42")
    await driver.write("on", {}, "true")
    assert await driver.read("level", {"kind": "constant", "value": 3}) == 42
    assert await driver.read("on", {}) is True
    assert await driver.health()
    await driver.stop()
    assert not await driver.health()
