"""The event bus's MQTT client against a real mosquitto, with aiomqtt (paho) as the other client; on both
asyncio's loop and uvloop (conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgecore.eventbus import EventBus, EventBusSettings
from edgecore.eventbus.mqtt import MqttClient, MqttError
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.procs import free_port

_quiet = logging.getLogger("tests.mqtt.aiomqtt")
_quiet.setLevel(logging.ERROR)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self.arrived.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def client(broker: Mosquitto, inbox: Inbox, keepalive: int = 30) -> AsyncIterator[MqttClient]:
    ours = await MqttClient.connect(
        broker.host, broker.port, client_id="edge-test", keepalive=keepalive, handler=inbox, timeout=5
    )
    try:
        yield ours
    finally:
        await ours.close()


async def test_messages_flow_both_ways_at_every_qos(broker: Mosquitto) -> None:
    inbox = Inbox()
    async with (
        client(broker, inbox) as ours,
        aiomqtt.Client(broker.host, broker.port, identifier="peer", logger=_quiet) as peer,
    ):
        await ours.subscribe([("down/#", 2)], timeout=5)
        await peer.subscribe("up/#", qos=2)
        for qos in (0, 1, 2):
            await peer.publish(f"down/{qos}", f"to the edge at {qos}".encode(), qos=qos)
        await inbox.until(3)
        assert sorted(inbox.messages) == [(f"down/{q}", f"to the edge at {q}".encode()) for q in (0, 1, 2)]

        # Each future completes once the broker has the message (PUBACK, PUBCOMP; at once at QoS 0).
        acks = [ours.publish(f"up/{qos}", f"from the edge at {qos}".encode(), qos) for qos in (0, 1, 2)]
        async with asyncio.timeout(5):
            await asyncio.gather(*acks)
            got = []
            async for message in peer.messages:
                got.append((message.topic.value, message.payload))
                if len(got) == 3:
                    break
        assert sorted(got) == [(f"up/{q}", f"from the edge at {q}".encode()) for q in (0, 1, 2)]


async def test_an_idle_connection_is_kept_alive(broker: Mosquitto) -> None:
    # mosquitto drops a client that sends nothing for 1.5 keepalives: 1.5 s here, and we stay 3.5 s idle.
    inbox = Inbox()
    async with (
        client(broker, inbox, keepalive=1) as ours,
        aiomqtt.Client(broker.host, broker.port, identifier="peer", logger=_quiet) as peer,
    ):
        await ours.subscribe([("down/#", 1)], timeout=5)
        await asyncio.sleep(3.5)
        await peer.publish("down/late", b"still there", qos=1)
        await inbox.until(1)
        assert inbox.messages == [("down/late", b"still there")]


async def test_a_lost_broker_fails_what_waits_and_says_so(broker: Mosquitto) -> None:
    async with client(broker, Inbox()) as ours:
        await ours.subscribe([("down/#", 1)], timeout=5)
        broker.stop()
        with pytest.raises(MqttError, match=r"connection lost|the broker closed the connection"):
            async with asyncio.timeout(5):
                await ours.wait_closed()
        with pytest.raises(MqttError, match="not connected"):
            ours.publish("up/x", b"", 1)


async def test_publishes_waiting_for_their_ack_fail_when_the_connection_goes() -> None:
    # A "broker" that accepts the connection and the publishes but never acknowledges them, then hangs up.
    got_publishes = asyncio.Event()

    async def no_acks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(23)  # our CONNECT (client id "edge-test")
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        await reader.readexactly(2 * 14)  # two PUBLISH packets to "up/x", QoS 1, payload "lost"
        got_publishes.set()
        writer.close()

    server = await asyncio.start_server(no_acks, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ours = await MqttClient.connect(
            "127.0.0.1", port, client_id="edge-test", keepalive=30, handler=Inbox(), timeout=5
        )
        pending = [ours.publish("up/x", b"lost", 1), ours.publish("up/x", b"lost", 1)]
        async with asyncio.timeout(5):
            await got_publishes.wait()
            results = await asyncio.gather(*pending, return_exceptions=True)
            with pytest.raises(MqttError, match="the broker closed the connection"):
                await ours.wait_closed()
        assert [type(r) for r in results] == [MqttError, MqttError]
        await ours.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_failures_name_the_broker_and_the_reason() -> None:
    port = free_port()
    with pytest.raises(MqttError, match=f"cannot connect to 127.0.0.1:{port}: "):
        await MqttClient.connect("127.0.0.1", port, client_id="c", keepalive=30, handler=Inbox(), timeout=5)

    # Something that accepts and then says nothing: not a broker.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\xf0\x00")  # packet type 15 is reserved
        await writer.drain()
        await reader.read()
        writer.close()

    refusals = [
        (silent, "no CONNACK from 127.0.0.1:"),
        (garbage, "the broker broke the protocol: a broker does not send packet type 15"),
    ]
    for serve, error in refusals:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(MqttError, match=error):
                await MqttClient.connect("127.0.0.1", port, client_id="c", keepalive=30, handler=Inbox(), timeout=0.5)
        finally:
            server.close()
            await server.wait_closed()


async def test_the_event_bus_drops_what_cannot_be_sent_and_sends_the_rest(broker: Mosquitto) -> None:
    bus = EventBus(EventBusSettings(server=broker.url, window=2))
    async with aiomqtt.Client(broker.host, broker.port, identifier="peer", logger=_quiet) as peer:
        await peer.subscribe("up/#", qos=1)
        task = asyncio.create_task(bus.run())
        try:
            async with asyncio.timeout(10):
                await bus.connected.wait()
                bus.publish("up/#", {"n": 0})  # a wildcard: no broker would take it
                for n in range(1, 6):
                    bus.publish(f"up/{n}", {"n": n})
                got = []
                async for message in peer.messages:
                    got.append(message.topic.value)
                    if len(got) == 5:
                        break
            assert got == [f"up/{n}" for n in range(1, 6)]  # in order, through a window of 2
            assert bus.dropped == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
