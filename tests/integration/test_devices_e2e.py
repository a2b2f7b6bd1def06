"""Devices end to end: the API server, the cloudcore, edgecore and kubage-mapper commands, mosquitto and a
real pymodbus server. A Modbus thermostat's register shows in its Device status; a desired setpoint in the
Device spec is written to the register; a virtual device does the same round trip; readings taken while
the tunnel is cut arrive after it heals; a mosquitto restart is ridden out."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer

from cloudcore.kube import Kube
from scripts.harness.cluster import create_edge_node, create_namespace
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess, EdgeCoreProcess, MapperProcess
from tests.devicesim import HOLDING, INPUT
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually

pytestmark = pytest.mark.kube
DEVICES = "/apis/devices.kubeedge.io/v1beta1"


def model(name: str, protocol: str, properties: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name},
        "spec": {"protocol": protocol, "properties": properties},
    }


def device(
    name: str, node: str, model_name: str, protocol: dict[str, Any], properties: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name},
        "spec": {
            "deviceModelRef": {"name": model_name},
            "nodeName": node,
            "protocol": protocol,
            "properties": properties,
        },
    }


async def reported(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    status = (await kube.get(f"{DEVICES}/namespaces/{namespace}/devices/{name}")).get("status") or {}
    return {t["propertyName"]: (t.get("reported") or {}).get("value", "") for t in status.get("twins") or []}


async def namespace_and_edge_node(kube: Kube) -> tuple[str, str]:
    """A fresh namespace and an edge Node (labelled as CloudCore watches for), both with unique names."""
    namespace, node = f"t-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:6]}"
    await create_namespace(kube, namespace)
    await create_edge_node(kube, node)
    return namespace, node


async def test_modbus_and_virtual_devices_round_trip_through_the_cloud(
    kube: Kube,
    cloud: CloudCoreProcess,
    mosquitto: Mosquitto,
    modbus: tuple[ModbusTcpServer, int],
    pki: Pki,
    tmp_path: Path,
) -> None:
    server, modbus_port = modbus
    await server.async_setValues(1, INPUT, 0, [234])
    await server.async_setValues(1, HOLDING, 1, [215])
    namespace, node = await namespace_and_edge_node(kube)
    objects = f"{DEVICES}/namespaces/{namespace}"
    await kube.request(
        "POST",
        f"{objects}/devicemodels",
        body=model(
            "thermostat",
            "modbus",
            [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "FLOAT", "accessMode": "ReadWrite"},
            ],
        ),
    )
    await kube.request(
        "POST",
        f"{objects}/devices",
        body=device(
            "thermo",
            node,
            "thermostat",
            {"protocolName": "modbus", "configData": {"host": "127.0.0.1", "port": modbus_port, "slaveID": 1}},
            [
                {
                    "name": "temperature",
                    "collectCycle": 200,
                    "reportCycle": 200,
                    "reportToCloud": True,
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "InputRegister", "offset": 0, "scale": 0.1},
                    },
                },
                {
                    "name": "setpoint",
                    "collectCycle": 200,
                    "reportCycle": 200,
                    "desired": {"value": "21.5"},
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "HoldingRegister", "offset": 1, "scale": 0.1},
                    },
                },
            ],
        ),
    )
    await kube.request(
        "POST",
        f"{objects}/devicemodels",
        body=model("fan", "virtual", [{"name": "speed", "type": "INT", "accessMode": "ReadWrite"}]),
    )
    await kube.request(
        "POST",
        f"{objects}/devices",
        body=device(
            "fan1",
            node,
            "fan",
            {"protocolName": "virtual", "configData": {}},
            [
                {
                    "name": "speed",
                    "collectCycle": 200,
                    "reportCycle": 200,
                    "desired": {"value": "3"},
                    "visitors": {"protocolName": "virtual", "configData": {"kind": "constant", "min": 1, "max": 1}},
                }
            ],
        ),
    )
    async with FaultProxy("127.0.0.1", cloud.port) as tunnel:
        edge = EdgeCoreProcess(
            tmp_path / "edge",
            node=node,
            server=f"127.0.0.1:{tunnel.port}",
            pki=pki,
            runtime_endpoint=f"unix://{tmp_path}/no-runtime.sock",
            mqtt=mosquitto.url,
        )
        mappers = [
            MapperProcess(tmp_path / p, protocol=p, node=node, broker=mosquitto.url) for p in ("modbus", "virtual")
        ]
        edge.start()
        for m in mappers:
            m.start()
        try:
            await edge.wait_ready()
            # the register value read by the mapper shows in the Device status; the desired setpoint is written
            await eventually(lambda: _has(kube, namespace, "thermo", {"temperature": "23.4", "setpoint": "21.5"}), 60)
            assert await server.async_getValues(1, HOLDING, 1, 1) == [215]
            await kube.request(
                "PATCH",
                f"{objects}/devices/thermo",
                content_type="application/json-patch+json",
                body=[{"op": "replace", "path": "/spec/properties/1/desired/value", "value": "24"}],
            )
            await eventually(lambda: _register(server, 1, 240), 30)
            await eventually(lambda: _has(kube, namespace, "thermo", {"setpoint": "24.0"}), 30)
            # the virtual device: its desired speed reaches it and comes back as reported
            await eventually(lambda: _has(kube, namespace, "fan1", {"speed": "3"}), 30)
            # readings taken while the tunnel is cut reach the API server after it heals
            tunnel.refuse()
            tunnel.cut()
            await server.async_setValues(1, INPUT, 0, [301])
            await eventually(lambda: _outbox_holds(edge), 20)
            assert not await _has(kube, namespace, "thermo", {"temperature": "30.1"})
            tunnel.refuse(False)
            await eventually(lambda: _has(kube, namespace, "thermo", {"temperature": "30.1"}), 60)
            # mosquitto restarts mid-stream: readings resume
            mosquitto.restart()
            await server.async_setValues(1, INPUT, 0, [188])
            await eventually(lambda: _has(kube, namespace, "thermo", {"temperature": "18.8"}), 60)
        finally:
            for m in mappers:
                assert m.stop() == 0, m.tail()
            assert edge.stop() == 0, edge.tail()


async def _has(kube: Kube, namespace: str, name: str, expected: dict[str, str]) -> bool:
    values = await reported(kube, namespace, name)
    return all(values.get(k) == v for k, v in expected.items())


async def _register(server: ModbusTcpServer, offset: int, value: int) -> bool:
    return bool(await server.async_getValues(1, HOLDING, offset, 1) == [value])


def _outbox_holds(edge: EdgeCoreProcess) -> bool:
    metrics = edge.metrics()
    line = next(x for x in metrics.splitlines() if x.startswith("kubage_edgehub_outbox "))
    return float(line.split()[1]) > 0


async def test_an_opcua_device_round_trips_through_the_cloud(
    kube: Kube,
    cloud: CloudCoreProcess,
    mosquitto: Mosquitto,
    opcua: tuple[Any, str, dict[str, Any]],
    pki: Pki,
    tmp_path: Path,
) -> None:
    _, url, nodes = opcua
    namespace, node = await namespace_and_edge_node(kube)
    objects = f"{DEVICES}/namespaces/{namespace}"
    await kube.request(
        "POST",
        f"{objects}/devicemodels",
        body=model(
            "panel",
            "opcua",
            [
                {"name": "temperature", "type": "DOUBLE", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "DOUBLE", "accessMode": "ReadWrite"},
            ],
        ),
    )
    visitor = {
        name: {"protocolName": "opcua", "configData": {"nodeID": nodes[name].nodeid.to_string()}}
        for name in ("temperature", "setpoint")
    }
    await kube.request(
        "POST",
        f"{objects}/devices",
        body=device(
            "panel1",
            node,
            "panel",
            {"protocolName": "opcua", "configData": {"url": url}},
            [
                {"name": "temperature", "collectCycle": 200, "reportCycle": 200, "visitors": visitor["temperature"]},
                {
                    "name": "setpoint",
                    "collectCycle": 200,
                    "reportCycle": 200,
                    "desired": {"value": "30"},
                    "visitors": visitor["setpoint"],
                },
            ],
        ),
    )
    edge = EdgeCoreProcess(
        tmp_path / "edge",
        node=node,
        server=f"127.0.0.1:{cloud.port}",
        pki=pki,
        runtime_endpoint=f"unix://{tmp_path}/no-runtime.sock",
        mqtt=mosquitto.url,
    )
    mapper = MapperProcess(tmp_path / "opcua", protocol="opcua", node=node, broker=mosquitto.url)
    edge.start()
    mapper.start()
    try:
        await edge.wait_ready()
        await eventually(lambda: _has(kube, namespace, "panel1", {"temperature": "21.5", "setpoint": "30.0"}), 60)
        assert await nodes["setpoint"].read_value() == 30.0
    finally:
        assert mapper.stop() == 0, mapper.tail()
        assert edge.stop() == 0, edge.tail()
