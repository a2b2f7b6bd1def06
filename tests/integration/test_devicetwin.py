"""DeviceTwin and EventBus with a real mosquitto: a test mapper (a plain aiomqtt client) asks for its devices,
reports twins, gets errors for bad reports and deltas for new desired values, and all of it keeps working
when the broker restarts under it.

The broker here is private to each test (started and stopped by pid), since one test restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from structlog.testing import capture_logs

from common import devices as topics
from common.devices import MAX_PAYLOAD_BYTES
from common.messages import Operation
from edgecore.devicetwin import DeviceTwin
from edgecore.eventbus import EventBus, EventBusSettings
from edgecore.metamanager.store import MetaStore
from scripts.harness.procs import free_port
from tests.store import put
from tests.tunnel import eventually, fast_backoff
from tests.unit.devicetwin.objects import NAMESPACE, Upstream, thermometer, thermometer_model

MOSQUITTO = "/usr/sbin/mosquitto"
T1 = f"{NAMESPACE}/t1"
_quiet = logging.getLogger("tests.mapper.aiomqtt")
_quiet.setLevel(logging.ERROR)


class Broker:
    """mosquitto on 127.0.0.1:<port>; ``stop`` ends exactly the process it started."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)

    async def start(self) -> None:
        self.proc = self._spawn()
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(tmp_path)
    await b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Mapper:
    """A device mapper as far as MQTT goes: it reconnects, asks for its devices on every connect, and keeps
    every message it gets."""

    port: int
    node: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier=f"mapper-{uuid.uuid4().hex[:8]}", logger=_quiet, timeout=2.0
                ) as client:
                    await client.subscribe(
                        [
                            ("$hw/events/device/+/+/twin/update/+", 1),
                            ("$hw/events/device/+/+/twin/get/result", 1),
                            ("$hw/events/device/+/+/state/update/result", 1),
                            (f"$hw/events/node/{self.node}/membership/#", 1),
                        ]
                    )
                    self.client = client
                    self.connected.set()
                    # what a mapper does on every connect: ask for its devices (and so get their desired values)
                    await client.publish(topics.membership_get(self.node), orjson.dumps({"event_id": "hello"}), qos=1)
                    try:
                        async for message in client.messages:
                            self.received.append((message.topic.value, orjson.loads(bytes(message.payload))))
                            self._arrived.set()
                    finally:
                        self.client = None
                        self.connected.clear()
            await asyncio.sleep(0.05)

    async def send(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        await asyncio.wait_for(self.connected.wait(), 10)
        assert self.client is not None
        await self.client.publish(topic, payload if isinstance(payload, bytes) else orjson.dumps(payload), qos=1)

    async def expect(
        self,
        topic: str,
        match: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for got_topic, payload in self.received:
                    if got_topic == topic and match(payload):
                        return payload
                self._arrived.clear()
                await self._arrived.wait()

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload in self.received if t == topic]


@dataclass
class Edge:
    store: MetaStore
    bus: EventBus
    twin: DeviceTwin
    upstream: Upstream
    node: str


@pytest.fixture
async def edge(broker: Broker, tmp_path: Path) -> AsyncIterator[Edge]:
    node = f"edge-{uuid.uuid4().hex[:6]}"
    store = await MetaStore.open(tmp_path / "edge.db")
    await put(store, "devicemodel", thermometer_model())
    await put(store, "device", thermometer("t1", node=node))
    upstream = Upstream()
    bus = EventBus(EventBusSettings(server=f"tcp://127.0.0.1:{broker.port}", max_wait=30.0), delays=fast_backoff)
    twin = DeviceTwin(node_name=node, store=store, publish_upstream=upstream, publish_local=bus.publish)
    bus.set_handler(twin.submit)
    bus.add_connection_listener(twin.on_bus_connection)
    tasks = [asyncio.create_task(bus.run(), name="test.eventbus"), asyncio.create_task(twin.run(), name="test.twin")]
    try:
        await asyncio.wait_for(bus.connected.wait(), 10)
        await asyncio.wait_for(twin.loaded.wait(), 10)
        yield Edge(store, bus, twin, upstream, node)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


@pytest.fixture
async def mapper(broker: Broker, edge: Edge) -> AsyncIterator[Mapper]:
    m = Mapper(broker.port, edge.node)
    task = asyncio.create_task(m.run(), name="test.mapper")
    try:
        await asyncio.wait_for(m.connected.wait(), 10)
        yield m
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def report(prop: str, value: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": 1, "twin": {prop: {"actual": {"value": value}}}}


def reported_upstream(edge: Edge, prop: str) -> list[str]:
    key = f"devicetwin/{NAMESPACE}/t1/{prop}"
    return [i["content"]["twins"][0]["reported"]["value"] for i in edge.upstream.items if i["key"] == key]


async def test_a_mapper_gets_its_devices_and_its_reports_go_upstream(edge: Edge, mapper: Mapper) -> None:
    await mapper.send(topics.membership_get(edge.node), {"event_id": "m1"})
    result = await mapper.expect(topics.membership_get_result(edge.node), lambda p: p["event_id"] == "m1")
    (device,) = result["devices"]
    assert device["id"] == T1
    assert device["spec"]["deviceModelRef"] == {"name": "thermometer"} and device["spec"]["nodeName"] == edge.node
    assert {p["name"]: p["type"] for p in device["model"]["properties"]}["setpoint"] == "INT"
    delta = await mapper.expect(topics.twin_update_delta(T1))
    assert delta["delta"] == {"setpoint": "21"}

    await mapper.send(topics.twin_update(T1), report("temperature", "22.5", "r1"))
    echoed = await mapper.expect(topics.twin_update_result(T1), lambda p: p["event_id"] == "r1")
    assert echoed["twin"] == {"temperature": {"actual": {"value": "22.5"}}}
    document = await mapper.expect(topics.twin_update_document(T1), lambda p: p["event_id"] == "r1")
    assert document["twin"]["temperature"]["current"]["actual"]["value"] == "22.5"
    assert reported_upstream(edge, "temperature") == ["22.5"]
    (item,) = edge.upstream.items
    assert item["resource"] == f"{NAMESPACE}/devicetwin/t1" and item["group"] == "twin"

    await mapper.send(topics.twin_get(T1), {"event_id": "g1"})
    got = await mapper.expect(topics.twin_get_result(T1), lambda p: p["event_id"] == "g1")
    assert got["twin"]["temperature"]["actual"]["value"] == "22.5"
    assert got["twin"]["setpoint"]["expected"]["value"] == "21"

    await mapper.send(topics.state_update(T1), {"event_id": "s1", "state": "online"})
    assert (await mapper.expect(topics.state_update_result(T1)))["state"] == "online"
    assert edge.upstream.items[-1]["key"] == f"devicestate/{NAMESPACE}/t1"


@pytest.mark.parametrize(
    ("device", "payload", "code", "reason"),
    [
        (T1, b"this is not json", 400, "not JSON"),
        (f"{NAMESPACE}/nosuch", orjson.dumps(report("temperature", "1", "e")), 404, "not a device of node"),
        (T1, b'{"event_id": "e", "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', 400, "limit is"),
        (T1, orjson.dumps(report("setpoint", "warm", "e")), 400, "not an INT"),
    ],
    ids=["not-json", "unknown-device", "oversized", "wrong-type"],
)
async def test_a_bad_report_gets_an_error_and_goes_nowhere(
    edge: Edge, mapper: Mapper, device: str, payload: bytes, code: int, reason: str
) -> None:
    with capture_logs() as logs:
        await mapper.send(topics.twin_update(device), payload)
        error = await mapper.expect(topics.twin_update_result(device))
    assert error["code"] == code and reason in error["reason"], error
    # a good report after the bad one is handled: the bad one was handled first and changed nothing
    await mapper.send(topics.twin_update(T1), report("temperature", "20", "ok"))
    await mapper.expect(topics.twin_update_result(T1), lambda p: p["event_id"] == "ok")
    assert [i["key"] for i in edge.upstream.items] == [f"devicetwin/{NAMESPACE}/t1/temperature"]
    assert not [d for d in mapper.on(topics.twin_update_document(T1)) if d["event_id"] != "ok"]
    assert (await edge.twin.twins.get(T1))["temperature"].reported_version == 1
    rejected = [e for e in logs if e["event"] == "twin_rejected"]
    assert len(rejected) == 1 and rejected[0]["device"] == device and reason in rejected[0]["reason"]


async def test_a_new_desired_value_reaches_the_mapper(edge: Edge, mapper: Mapper) -> None:
    changes = await put(edge.store, "device", thermometer("t1", node=edge.node, setpoint="25", rv=2), Operation.UPDATE)
    edge.twin.on_changes(changes)  # as EdgeHub does after its commit
    delta = await mapper.expect(topics.twin_update_delta(T1), lambda p: p["delta"] == {"setpoint": "25"})
    assert delta["twin"]["setpoint"]["expected"]["value"] == "25"
    assert not mapper.on(topics.membership_updated(edge.node))

    changes = await put(edge.store, "device", thermometer("t2", node=edge.node, setpoint=None))
    edge.twin.on_changes(changes)
    updated = await mapper.expect(topics.membership_updated(edge.node))
    assert [d["id"] for d in updated["added_devices"]] == [f"{NAMESPACE}/t2"]


async def test_devicetwin_resumes_after_the_broker_restarts(broker: Broker, edge: Edge, mapper: Mapper) -> None:
    tried: list[str] = []
    # A flag and a time limit per publish, not only cancel(): Python 3.11's wait_for (inside aiomqtt's publish)
    # can swallow a cancellation, and a publish on a client the broker restart cut off can wait for ever.
    stop = asyncio.Event()

    async def stream() -> None:  # the mapper reports a reading every 20 ms, through the outage
        for n in range(1_000_000):
            if stop.is_set():
                return
            value = str(1000 + n)  # sorts as it was sent
            tried.append(value)  # before sending: a publish that fails may still have reached the broker
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2):
                    await mapper.send(topics.twin_update(T1), report("temperature", value, f"s{n}"))
            await asyncio.sleep(0.02)

    streaming = asyncio.create_task(stream(), name="test.stream")
    try:
        await eventually(lambda: len(reported_upstream(edge, "temperature")) >= 5)
        broker.stop()
        await eventually(lambda: not edge.bus.connected.is_set())
        # while the broker is away the desired value changes: the delta waits for the broker
        changes = await put(
            edge.store, "device", thermometer("t1", node=edge.node, setpoint="26", rv=2), Operation.UPDATE
        )
        edge.twin.on_changes(changes)
        await asyncio.sleep(0.5)
        before = len(reported_upstream(edge, "temperature"))
        await broker.start()
        await asyncio.wait_for(edge.bus.connected.wait(), 10)
        await eventually(lambda: len(reported_upstream(edge, "temperature")) >= before + 5)
        assert edge.bus.connections == 2
        await mapper.expect(topics.twin_update_delta(T1), lambda p: p["delta"] == {"setpoint": "26"})
    finally:
        stop.set()
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming

    # A last report after the stream: the mapper's reports arrive in order, so once this one is in the twin table
    # and upstream, no earlier one still in flight in the broker can land after the checks below.
    last = "9999999"  # sorts after every streamed value
    tried.append(last)
    await mapper.send(topics.twin_update(T1), report("temperature", last, "last"))

    # the latest value DeviceTwin took is in the twin table and went upstream last; each report counted in the
    # version, though reports handled in one batch send only their latest value up. (A batch may still be
    # between its outbox write and its twin-table write: wait for it to finish.)
    async def settled() -> bool:
        row = (await edge.twin.twins.get(T1))["temperature"]
        return row.reported == last == reported_upstream(edge, "temperature")[-1]

    await eventually(settled)
    row = (await edge.twin.twins.get(T1))["temperature"]
    values = reported_upstream(edge, "temperature")
    assert row.reported == values[-1] and row.reported_version >= len(values)
    assert set(values) <= set(tried) and values == sorted(values)
