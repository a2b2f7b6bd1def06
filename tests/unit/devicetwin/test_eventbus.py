"""EventBus without a broker: addresses, and publishes that are bounded in number and in waiting time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from edgecore.eventbus import EventBus, EventBusSettings, parse_server
from scripts.harness.procs import free_port


def test_server_addresses() -> None:
    assert parse_server("tcp://127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_server("tcp://broker.local") == ("broker.local", 1883)
    assert parse_server("10.0.0.2:1884") == ("10.0.0.2", 1884)
    with pytest.raises(ValueError, match="tcp://host:port"):
        parse_server("ssl://127.0.0.1:8883")


async def test_a_full_queue_drops_the_oldest() -> None:
    bus = EventBus(EventBusSettings(max_queued=3))
    for n in range(5):
        bus.publish(f"t/{n}", {"n": n})
    assert bus.queued == 3 and bus.dropped == 2


def quick() -> Iterator[float]:
    while True:
        yield 0.05


async def test_without_a_broker_publishes_wait_their_bound_then_are_dropped_and_it_keeps_trying() -> None:
    bus = EventBus(EventBusSettings(server=f"tcp://127.0.0.1:{free_port()}", max_wait=0.3), delays=quick)
    with capture_logs() as logs:
        task = asyncio.create_task(bus.run())
        bus.publish("$hw/events/device/default/t1/twin/update/result", {"event_id": "x"})
        await asyncio.sleep(0.1)
        assert bus.queued == 1 and bus.dropped == 0  # still waiting for a broker
        await asyncio.sleep(0.5)
        assert bus.queued == 0 and bus.dropped == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    attempts = [e for e in logs if e["event"] == "mqtt_unavailable"]
    assert len(attempts) >= 3 and all(e["log_level"] == "warning" for e in attempts)
    assert not bus.connected.is_set()
