"""Mappers against real parts: mosquitto, pymodbus's own TCP server, an asyncua server.

The test plays EdgeCore on the broker: it answers ``membership/get`` with the node's devices (built with
``common.devices.member``, the contract), records what mappers publish, and sends twin deltas.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from asyncua import ua
from asyncua.server.server import Server
from pymodbus.server import ModbusTcpServer

from common.devices import (
    member,
    membership_get,
    membership_get_result,
    membership_updated,
    state_update,
    twin_update,
    twin_update_delta,
)
from common.protocol.backoff import backoff_delays
from mappers.sdk import Broker, MapperRunner, load_driver
from mappers.sdk.runner import cancel_until_done
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.procs import free_port, production_env
from tests.devicesim import COIL, HOLDING, INPUT, modbus_server

Payload = dict[str, Any]
BIN = Path(sys.executable).parent
_quiet = logging.getLogger("tests.mappers.edge")


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls state the mapper keeps no event for
            await asyncio.sleep(0.05)


def fast_reconnect() -> Iterator[float]:
    return backoff_delays(initial=0.2, cap=1.0)


def device(
    name: str, protocol: str, config: dict[str, Any], properties: list[dict[str, Any]], model: list[dict[str, Any]]
) -> dict[str, Any]:
    """A membership entry for a Device and its DeviceModel, shaped as the API server would hold them."""
    return member(
        {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "deviceModelRef": {"name": f"{name}-model"},
                "protocol": {"protocolName": protocol, "configData": config},
                "properties": [
                    {
                        "collectCycle": 100,
                        "reportCycle": 100,
                        **p,
                        "visitors": {"protocolName": protocol, **p["visitors"]},
                    }
                    for p in properties
                ],
            },
        },
        {"metadata": {"name": f"{name}-model", "namespace": "default"}, "spec": {"properties": model}},
    )


class Edge:
    """EdgeCore's side of the broker, reconnecting on its own when the broker restarts."""

    def __init__(self, broker: Mosquitto, node: str, devices: list[Payload]) -> None:
        self.broker = broker
        self.node = node
        self.devices = devices
        self.received: list[tuple[str, Payload]] = []
        self.membership_requests = 0
        self.asked = asyncio.Event()
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            try:
                async with aiomqtt.Client(self.broker.host, self.broker.port, logger=_quiet) as client:
                    await client.subscribe(
                        [
                            (membership_get(self.node), 1),
                            ("$hw/events/device/+/+/twin/update", 1),
                            ("$hw/events/device/+/+/state/update", 1),
                        ]
                    )
                    self._client = client
                    self.connected.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        data = orjson.loads(message.payload)
                        if message.topic.value == membership_get(self.node):
                            self.membership_requests += 1
                            self.asked.set()
                            result = {"event_id": data["event_id"], "timestamp": 0, "devices": self.devices}
                            answer = orjson.dumps(result)
                            await client.publish(membership_get_result(self.node), answer, qos=1, timeout=math.inf)
                        else:
                            self.received.append((message.topic.value, data))
                            self._arrived.set()
            except aiomqtt.MqttError:
                self._client = None
                self.connected.clear()
                await asyncio.sleep(0.05)

    async def publish(self, topic: str, payload: Payload) -> None:
        async with asyncio.timeout(10):
            await self.connected.wait()
        assert self._client is not None
        async with asyncio.timeout(10):  # not aiomqtt's own: Python 3.11's wait_for can drop a cancellation
            await self._client.publish(topic, orjson.dumps(payload), qos=1, timeout=math.inf)

    def mark(self) -> int:
        """A point in what was received: ``wait_for(..., since=mark)`` looks only at what came after it."""
        return len(self.received)

    async def wait_for(
        self,
        topic: str,
        match: Callable[[Payload], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
        since: int = 0,
    ) -> Payload:
        seen = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._arrived.clear()
                    for got, payload in self.received[seen:]:
                        if got == topic and match(payload):
                            return payload
                    seen = len(self.received)
                    await self._arrived.wait()
        except TimeoutError:
            recent = [(t, p) for t, p in self.received[-5:]]
            raise AssertionError(f"nothing matching on {topic} within {timeout}s; last received: {recent}") from None

    async def twin(self, device_id: str, timeout: float = 10.0, **values: str) -> Payload:  # noqa: ASYNC109
        """The first twin update whose actual values include ``values``."""

        def match(payload: Payload) -> bool:
            twin = payload.get("twin", {})
            return all(twin.get(k, {}).get("actual", {}).get("value") == v for k, v in values.items())

        return await self.wait_for(twin_update(device_id), match, timeout)

    def topics(self) -> set[str]:
        return {t for t, _ in self.received}


@asynccontextmanager
async def edge(broker: Mosquitto, devices: list[Payload]) -> AsyncIterator[Edge]:
    stub = Edge(broker, f"node-{uuid.uuid4().hex[:8]}", devices)
    task = asyncio.create_task(stub.run(), name="edge-stub")
    try:
        async with asyncio.timeout(10):
            await stub.connected.wait()
        yield stub
    finally:
        stub.stopping = True
        await cancel_until_done(task)


@asynccontextmanager
async def mapper(broker: Mosquitto, protocol: str, node: str) -> AsyncIterator[MapperRunner]:
    runner = MapperRunner(
        protocol=protocol,
        node=node,
        driver=load_driver(protocol),  # through the kubage.mappers entry points
        broker=Broker.parse(broker.url),
        reconnect_delays=fast_reconnect,
    )
    task = asyncio.create_task(runner.run(), name=f"mapper-{protocol}")
    try:
        yield runner
        assert not task.done(), "the mapper stopped on its own"
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            raise AssertionError(f"the mapper did not stop within 15 s when cancelled:\n{task_stacks()}")
    assert task.cancelled(), f"the mapper ended with {task.exception()!r}"


def task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    return out.getvalue()


# -- modbus -------------------------------------------------------------------------------------------------


def thermostat(name: str, port: int) -> Payload:
    return device(
        name,
        "modbus",
        {"host": "127.0.0.1", "port": port, "slaveID": 1},
        [
            {
                "name": "temperature",
                "visitors": {"configData": {"register": "InputRegister", "offset": 0, "scale": 0.1}},
            },
            {
                "name": "setpoint",
                "visitors": {"configData": {"register": "HoldingRegister", "offset": 3, "limit": 1, "scale": 0.1}},
            },
            {"name": "heater", "visitors": {"configData": {"register": "Coil", "offset": 2}}},
        ],
        [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
            {"name": "setpoint", "type": "FLOAT", "accessMode": "ReadWrite", "minimum": 5, "maximum": 80},
            {"name": "heater", "type": "BOOLEAN", "accessMode": "ReadWrite"},
        ],
    )


async def test_modbus_mapper_reports_registers_and_writes_deltas(
    mosquitto: Mosquitto, modbus: tuple[ModbusTcpServer, int]
) -> None:
    server, port = modbus
    await server.async_setValues(1, INPUT, 0, [215])
    await server.async_setValues(1, HOLDING, 3, [200])
    foreign = device("boiler", "bacnet", {"deviceInstance": 7}, [{"name": "pressure", "visitors": {}}], [])
    async with edge(mosquitto, [thermostat("thermo", port), foreign]) as stub, mapper(mosquitto, "modbus", stub.node):
        first = await stub.twin("default/thermo", temperature="21.5", setpoint="20.0", heater="false")
        assert {k: v["metadata"]["type"] for k, v in first["twin"].items()} == {
            "temperature": "float",
            "setpoint": "float",
            "heater": "boolean",
        }
        await stub.wait_for(state_update("default/thermo"), lambda p: p["state"] == "online")

        await server.async_setValues(1, INPUT, 0, [230])
        await stub.twin("default/thermo", temperature="23.0")

        delta = {"event_id": "d1", "timestamp": 0, "twin": {}, "delta": {"setpoint": "42.5", "heater": "true"}}
        await stub.publish(twin_update_delta("default/thermo"), delta)
        await stub.twin("default/thermo", setpoint="42.5", heater="true")
        assert await server.async_getValues(1, HOLDING, 3, 1) == [425]
        assert await server.async_getValues(1, COIL, 2, 1) == [True]

        # read-only and out-of-range desires are refused; the registers keep their values
        refused = {"event_id": "d2", "timestamp": 0, "twin": {}, "delta": {"temperature": "1", "setpoint": "99"}}
        await stub.publish(twin_update_delta("default/thermo"), refused)
        await server.async_setValues(1, INPUT, 0, [231])
        await stub.twin("default/thermo", temperature="23.1")
        await stub.twin("default/thermo", setpoint="42.5")
        assert await server.async_getValues(1, HOLDING, 3, 1) == [425]

    # the bacnet device was never this mapper's business
    assert not any("/default/boiler/" in t for t in stub.topics())


async def test_mapper_rides_out_a_broker_restart(mosquitto: Mosquitto, modbus: tuple[ModbusTcpServer, int]) -> None:
    server, port = modbus
    await server.async_setValues(1, INPUT, 0, [100])
    async with edge(mosquitto, [thermostat("survivor", port)]) as stub, mapper(mosquitto, "modbus", stub.node) as run:
        await stub.twin("default/survivor", temperature="10.0")
        asked = stub.membership_requests

        outage = stub.mark()
        await asyncio.to_thread(mosquitto.stop)
        await server.async_setValues(1, INPUT, 0, [260])
        await asyncio.sleep(1.0)  # the mapper keeps collecting with no broker to talk to
        await asyncio.to_thread(mosquitto.start)

        await stub.twin("default/survivor", temperature="26.0")
        # the state is published again after the reconnect, for an EdgeCore that may have restarted too
        await stub.wait_for(state_update("default/survivor"), lambda p: p["state"] == "online", since=outage)
        await server.async_setValues(1, INPUT, 0, [270])
        await stub.twin("default/survivor", temperature="27.0")
        # it asks for its devices again after reconnecting (again a second later if the edge was not back yet)
        await until(lambda: stub.membership_requests > asked)
        assert run.devices == ["default/survivor"]

        await asyncio.to_thread(mosquitto.restart)
        await server.async_setValues(1, INPUT, 0, [280])
        await stub.twin("default/survivor", temperature="28.0")


async def test_a_modbus_device_that_goes_away_is_offline_until_it_answers_again(mosquitto: Mosquitto) -> None:
    port = free_port()
    server = await modbus_server(port)
    try:
        await server.async_setValues(1, INPUT, 0, [111])
        async with edge(mosquitto, [thermostat("flaky", port)]) as stub, mapper(mosquitto, "modbus", stub.node):
            await stub.twin("default/flaky", temperature="11.1")
            await server.shutdown()  # type: ignore[no-untyped-call]
            down = stub.mark()
            await stub.wait_for(state_update("default/flaky"), lambda p: p["state"] == "offline", since=down)
            server = await modbus_server(port)
            await server.async_setValues(1, INPUT, 0, [122])
            back = stub.mark()
            await stub.wait_for(state_update("default/flaky"), lambda p: p["state"] == "online", since=back)
            await stub.twin("default/flaky", temperature="12.2")
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_membership_updates_add_and_remove_devices(
    mosquitto: Mosquitto, modbus: tuple[ModbusTcpServer, int]
) -> None:
    server, port = modbus
    await server.async_setValues(1, INPUT, 0, [150])
    async with edge(mosquitto, []) as stub, mapper(mosquitto, "modbus", stub.node) as run:
        async with asyncio.timeout(10):
            await stub.asked.wait()
        added = {"event_id": "m1", "timestamp": 0, "added_devices": [thermostat("late", port)], "removed_devices": []}
        await stub.publish(membership_updated(stub.node), added)
        await stub.twin("default/late", temperature="15.0")

        removed = {"event_id": "m2", "timestamp": 0, "added_devices": [], "removed_devices": [{"id": "default/late"}]}
        await stub.publish(membership_updated(stub.node), removed)
        await until(lambda: not run.devices)


# -- OPC UA -------------------------------------------------------------------------------------------------


async def test_opcua_mapper_reads_nodes_and_writes_deltas(
    mosquitto: Mosquitto, opcua: tuple[Server, str, dict[str, Any]]
) -> None:
    _, url, nodes = opcua
    entry = device(
        "panel",
        "opcua",
        {"url": url},
        [
            {"name": name, "visitors": {"configData": {"nodeID": node.nodeid.to_string()}}}
            for name, node in nodes.items()
        ],
        [
            {"name": "temperature", "type": "DOUBLE", "accessMode": "ReadOnly"},
            {"name": "setpoint", "type": "DOUBLE", "accessMode": "ReadWrite"},
            {"name": "enabled", "type": "BOOLEAN", "accessMode": "ReadWrite"},
        ],
    )
    async with edge(mosquitto, [entry]) as stub, mapper(mosquitto, "opcua", stub.node):
        await stub.twin("default/panel", temperature="21.5", setpoint="20.0", enabled="false")
        await nodes["temperature"].write_value(23.25, ua.VariantType.Double)
        await stub.twin("default/panel", temperature="23.25")

        delta = {"event_id": "d1", "timestamp": 0, "twin": {}, "delta": {"setpoint": "42.5", "enabled": "true"}}
        await stub.publish(twin_update_delta("default/panel"), delta)
        await stub.twin("default/panel", setpoint="42.5", enabled="true")
        assert await nodes["setpoint"].read_value() == 42.5
        assert await nodes["enabled"].read_value() is True


# -- the command ----------------------------------------------------------------------------------------------


async def test_kubage_mapper_command_serves_virtual_devices_and_stops_on_sigterm(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sensor = device(
        "sensor",
        "virtual",
        {},
        [
            {"name": "temperature", "visitors": {"configData": {"kind": "constant", "value": 21.5}}},
            {"name": "count", "visitors": {"configData": {"kind": "counter", "min": 0, "max": 1000}}},
            {"name": "switch", "visitors": {"configData": {"kind": "constant", "value": 0}}},
        ],
        [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
            {"name": "count", "type": "INT", "accessMode": "ReadOnly"},
            {"name": "switch", "type": "BOOLEAN", "accessMode": "ReadWrite"},
        ],
    )
    log = tmp_path / "mapper.log"
    async with edge(mosquitto, [sensor]) as stub:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *[str(BIN / "kubage-mapper"), "--protocol", "virtual", "--node", stub.node, "--broker", mosquitto.url],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=production_env(),
            )
        try:
            await stub.twin("default/sensor", temperature="21.5", switch="false")
            await stub.wait_for(twin_update("default/sensor"), lambda p: int(p["twin"]["count"]["actual"]["value"]) > 2)
            delta = {"event_id": "d1", "timestamp": 0, "twin": {}, "delta": {"switch": "true"}}
            await stub.publish(twin_update_delta("default/sensor"), delta)
            await stub.twin("default/sensor", switch="true")
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "shutdown_complete" in output


async def test_kubage_mapper_command_refuses_an_unknown_protocol() -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "kubage-mapper"), "--protocol", "bacnet", "--node", "edge-1", stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"no mapper driver for protocol 'bacnet'; installed: modbus, opcua, virtual" in err
