"""The per-device task against an in-memory driver: what it reports, what it writes, how it copes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mappers.sdk.device import DeviceTask
from mappers.sdk.driver import DeviceDriver
from mappers.sdk.errors import DeviceIOError
from mappers.sdk.outbox import Outbox, Payload
from mappers.sdk.plan import Member, plan_device
from mappers.sdk.values import Value

TWIN = "$hw/events/device/default/thermo/twin/update"
STATE = "$hw/events/device/default/thermo/state/update"


class FakeDriver:
    def __init__(self) -> None:
        self.values: dict[str, Value] = {"temperature": 21.5, "setpoint": 10}
        self.writes: list[tuple[str, str]] = []
        self.init_failures = 0
        self.write_failures = 0
        self.broken: set[str] = set()
        self.stopped = False

    async def init(self, device: Member) -> None:
        if self.init_failures:
            self.init_failures -= 1
            raise DeviceIOError("device unreachable")

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        if prop in self.broken:
            raise DeviceIOError("no answer")
        return self.values[prop]

    async def write(self, prop: str, visitor: dict[str, Any], value: str) -> None:
        if self.write_failures:
            self.write_failures -= 1
            raise DeviceIOError("no answer")
        self.writes.append((prop, value))
        self.values[prop] = int(value)

    async def health(self) -> bool:
        return not self.broken

    async def stop(self) -> None:
        self.stopped = True


def member(**setpoint: Any) -> Member:
    return {
        "id": "default/thermo",
        "spec": {
            "protocol": {"protocolName": "fake"},
            "properties": [
                {"name": "temperature", "collectCycle": 50, "reportCycle": 100},
                {"name": "setpoint", "collectCycle": 50, **setpoint},
            ],
        },
        "model": {
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": 0, "maximum": 100},
            ]
        },
    }


class Running:
    def __init__(self, device: DeviceTask, outbox: Outbox) -> None:
        self.device = device
        self.outbox = outbox

    async def next(self, topic: str, match: Callable[[Payload], bool] = lambda _: True) -> Payload:
        async with asyncio.timeout(3):
            while True:
                got, payload = await self.outbox.get()
                if got == topic and match(payload):
                    return payload


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
async def running(driver: FakeDriver, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    entry = getattr(request, "param", None) or member()
    outbox = Outbox()
    checked: DeviceDriver = driver  # the fake satisfies the protocol
    device = DeviceTask(entry, plan_device(entry), checked, outbox, init_delays=itertools.repeat(0.01))
    task = asyncio.create_task(device.run())
    try:
        yield Running(device, outbox)
    finally:
        task.cancel()
        await asyncio.wait({task})
    assert driver.stopped


def value(payload: Payload, prop: str) -> str | None:
    twin = payload["twin"].get(prop)
    return None if twin is None else str(twin["actual"]["value"])


async def test_readings_are_reported_as_strings_with_the_model_type(running: Running) -> None:
    payload = await running.next(TWIN)
    assert payload["twin"]["temperature"]["actual"]["value"] == "21.5"
    assert payload["twin"]["temperature"]["metadata"] == {"type": "float"}
    assert payload["twin"]["setpoint"]["actual"]["value"] == "10"
    assert isinstance(payload["twin"]["setpoint"]["actual"]["metadata"]["timestamp"], int)
    assert (await running.next(STATE))["state"] == "online"


async def test_a_desired_value_is_written_then_reported(running: Running, driver: FakeDriver) -> None:
    await running.next(TWIN)
    running.device.desire({"setpoint": "42"})
    payload = await running.next(TWIN, lambda p: value(p, "setpoint") == "42")
    assert driver.writes == [("setpoint", "42")]
    assert payload["twin"]["setpoint"]["metadata"] == {"type": "int"}


async def test_desires_the_model_forbids_are_refused(running: Running, driver: FakeDriver) -> None:
    await running.next(TWIN)
    running.device.desire({"temperature": "30", "nonexistent": "1", "setpoint": "101"})
    running.device.desire({"setpoint": "ten"})
    await asyncio.sleep(0.2)
    assert driver.writes == []


async def test_a_failed_write_is_retried(running: Running, driver: FakeDriver) -> None:
    driver.write_failures = 2
    running.device.desire({"setpoint": "7"})
    await running.next(TWIN, lambda p: value(p, "setpoint") == "7")
    assert driver.writes == [("setpoint", "7")]


@pytest.mark.parametrize("running", [member(desired={"value": "55"})], indirect=True)
async def test_the_specs_desired_value_is_applied_at_start(running: Running, driver: FakeDriver) -> None:
    await running.next(TWIN, lambda p: value(p, "setpoint") == "55")
    assert driver.writes == [("setpoint", "55")]


async def test_an_unreachable_device_is_offline_until_init_succeeds(driver: FakeDriver) -> None:
    driver.init_failures = 3
    entry = member()
    outbox = Outbox()
    device = DeviceTask(entry, plan_device(entry), driver, outbox, init_delays=itertools.repeat(0.05))
    task = asyncio.create_task(device.run())
    try:
        running = Running(device, outbox)
        assert (await running.next(STATE))["state"] == "offline"
        assert (await running.next(STATE))["state"] == "online"
        assert driver.init_failures == 0
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_failing_property_is_left_out_and_the_device_goes_offline(running: Running, driver: FakeDriver) -> None:
    await running.next(TWIN)
    driver.broken.add("temperature")
    await running.next(STATE, lambda p: p["state"] == "offline")
    driver.values["setpoint"] = 11
    payload = await running.next(TWIN, lambda p: value(p, "setpoint") == "11")
    assert value(payload, "temperature") is None  # no stale reading passed off as a fresh one
    driver.broken.clear()
    await running.next(STATE, lambda p: p["state"] == "online")


async def test_the_state_is_repeated_on_its_cycle(driver: FakeDriver) -> None:
    entry = member()
    entry["spec"]["stateReport"] = {"reportCycle": 100}
    outbox = Outbox()
    device = DeviceTask(entry, plan_device(entry), driver, outbox)
    task = asyncio.create_task(device.run())
    try:
        running = Running(device, outbox)
        for _ in range(3):  # a change of state comes once; the cycle repeats it
            assert (await running.next(STATE))["state"] == "online"
    finally:
        task.cancel()
        await asyncio.wait({task})


class SwallowingDriver(FakeDriver):
    """Loses a cancellation, as Python 3.11's asyncio.wait_for (inside pymodbus) does when the answer races it."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        self.reading.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.02)
        return await super().read(prop, visitor)


async def test_a_stop_request_ends_the_task_even_when_the_driver_swallows_the_cancellation() -> None:
    entry = member()
    outbox = Outbox()
    driver = SwallowingDriver()
    device = DeviceTask(entry, plan_device(entry), driver, outbox)
    task = asyncio.create_task(device.run())
    await Running(device, outbox).next(TWIN)
    driver.reading.clear()
    await driver.reading.wait()  # the cancellation lands inside a read, which drops it
    device.request_stop()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done
    assert driver.stopped
