from __future__ import annotations

import asyncio
import contextlib

import pytest

from mappers.modbus import ModbusDriver
from mappers.opcua import OpcuaDriver
from mappers.sdk import Broker, DeviceDriver, DriverNotFound, InvalidConfig, load_driver
from mappers.sdk.runner import cancel_until_done
from mappers.virtual import VirtualDriver


def test_drivers_are_found_through_their_entry_points() -> None:
    assert load_driver("virtual") is VirtualDriver
    assert load_driver("modbus") is ModbusDriver
    assert load_driver("opcua") is OpcuaDriver
    assert all(isinstance(load_driver(name)(), DeviceDriver) for name in ("virtual", "modbus", "opcua"))


def test_an_unknown_protocol_names_what_is_installed() -> None:
    with pytest.raises(DriverNotFound, match="installed: modbus, opcua, virtual"):
        load_driver("bacnet")


@pytest.mark.parametrize(
    ("url", "broker"),
    [
        ("tcp://127.0.0.1:1883", Broker("127.0.0.1", 1883)),
        ("mqtt://broker.local", Broker("broker.local", 1883)),
        ("10.0.0.1:11883", Broker("10.0.0.1", 11883)),
    ],
)
def test_broker_urls(url: str, broker: Broker) -> None:
    assert Broker.parse(url) == broker


@pytest.mark.parametrize(("url", "reason"), [("ssl://h:8883", "only tcp://"), ("tcp://:1883", "no host")])
def test_bad_broker_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        Broker.parse(url)


async def test_cancel_until_done_repeats_a_cancellation_that_was_dropped() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as asyncio.wait_for may, on Python 3.11
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_until_done(task, every=0.05)
    assert task.cancelled()
