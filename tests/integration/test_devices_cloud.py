"""Devices through CloudCore: a node's devices and models travel down with its other objects, reported
twins come back into the Device status, and a node can neither see nor report for another node's devices."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudcore.kube import Kube
from common import upstream
from edgecore.edgehub import EdgeHub
from scripts.harness.cluster import create_edge_node, create_namespace
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from tests.tunnel import eventually, running_edge

pytestmark = pytest.mark.kube
DEVICES = "/apis/devices.kubeedge.io/v1beta1"
MERGE = "application/merge-patch+json"


def thermostat(name: str, node: str, setpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name},
        "spec": {
            "deviceModelRef": {"name": "thermostat"},
            "nodeName": node,
            "protocol": {"protocolName": "modbus", "configData": {"host": "127.0.0.1", "port": 5020, "slaveID": 1}},
            "properties": [
                {
                    "name": "temperature",
                    "collectCycle": 1000,
                    "reportCycle": 1000,
                    "reportToCloud": True,
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "InputRegister", "offset": 0, "limit": 1, "scale": 0.1},
                    },
                },
                {
                    "name": "setpoint",
                    "desired": {"value": setpoint},
                    "visitors": {
                        "protocolName": "modbus",
                        "configData": {"register": "HoldingRegister", "offset": 1, "limit": 1, "scale": 0.1},
                    },
                },
            ],
        },
    }


def reading(namespace: str, device: str, prop: str, value: str, *, observed_desired: str = "") -> upstream.Upstream:
    return upstream.twin_reported(
        namespace, device, prop, value=value, value_type="string", timestamp_ms=1, observed_desired=observed_desired
    )


async def held(edge: EdgeHub, kind: str) -> dict[str, Any]:
    return {o["metadata"]["name"]: o for o in await edge.store.list_kind(kind)}


async def test_devices_go_down_twins_come_up_and_nodes_stay_apart(
    kube: Kube, cloud: CloudCoreProcess, pki: Pki, tmp_path: Path
) -> None:
    namespace, mine, theirs = (
        f"t-{uuid.uuid4().hex[:8]}",
        f"edge-{uuid.uuid4().hex[:6]}",
        f"edge-{uuid.uuid4().hex[:6]}",
    )
    await create_namespace(kube, namespace)
    for node in (mine, theirs):
        await create_edge_node(kube, node)
    await kube.request(
        "POST",
        f"{DEVICES}/namespaces/{namespace}/devicemodels",
        body={
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "DeviceModel",
            "metadata": {"name": "thermostat"},
            "spec": {
                "protocol": "modbus",
                "properties": [
                    {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                    {"name": "setpoint", "type": "FLOAT", "accessMode": "ReadWrite"},
                ],
            },
        },
    )
    await kube.request("POST", f"{DEVICES}/namespaces/{namespace}/devices", body=thermostat("t1", mine, "21.5"))
    await kube.request("POST", f"{DEVICES}/namespaces/{namespace}/devices", body=thermostat("t2", theirs, "19"))
    async with (
        running_edge(pki, cloud.port, tmp_path / "mine.db", node=mine) as edge,
        running_edge(pki, cloud.port, tmp_path / "theirs.db", node=theirs) as other,
    ):
        await eventually(lambda: _names(edge, "device", {"t1"}), timeout=20)
        await eventually(lambda: _names(edge, "devicemodel", {"thermostat"}), timeout=20)
        await eventually(lambda: _names(other, "device", {"t2"}), timeout=20)
        device = (await held(edge, "device"))["t1"]
        assert device["spec"]["properties"][1]["desired"]["value"] == "21.5"
        assert "status" not in device
        # a reading comes up and lands in the Device status
        await edge.publish(
            reading(namespace, "t1", "temperature", "23.4"),
            reading(namespace, "t1", "setpoint", "21.5", observed_desired="21.5"),
            upstream.device_state(namespace, "t1", "online", last_online_time="2026-11-28T12:00:00Z"),
        )
        await eventually(
            lambda: _reported(kube, namespace, "t1", {"temperature": "23.4", "setpoint": "21.5"}), timeout=20
        )

        async def online() -> bool:  # the state is its own upstream message: it may land after the twins
            status = (await kube.get(f"{DEVICES}/namespaces/{namespace}/devices/t1")).get("status") or {}
            return status.get("state") == "online" and status.get("lastOnlineTime") == "2026-11-28T12:00:00Z"

        await eventually(online, timeout=20)
        # a new desired value in the Device spec reaches the node's store
        await kube.request(
            "PATCH",
            f"{DEVICES}/namespaces/{namespace}/devices/t1",
            content_type="application/json-patch+json",
            body=[{"op": "replace", "path": "/spec/properties/1/desired/value", "value": "24"}],
        )
        await eventually(lambda: _desired(edge, "t1", "setpoint", "24"), timeout=20)
        # the other node reporting for this node's device is refused; its own device is untouched by it
        await other.publish(reading(namespace, "t1", "temperature", "-99"))
        await eventually(lambda: len(other.outbox) == 0, timeout=20)
        assert await _reported(kube, namespace, "t1", {"temperature": "23.4", "setpoint": "21.5"})
        assert "request_refused" in cloud.tail(400) and theirs in cloud.tail(400)
        assert "t1" not in await held(other, "device")


async def _names(edge: EdgeHub, kind: str, names: set[str]) -> bool:
    return set(await held(edge, kind)) == names


async def _reported(kube: Kube, namespace: str, name: str, expected: dict[str, str]) -> bool:
    status = (await kube.get(f"{DEVICES}/namespaces/{namespace}/devices/{name}")).get("status") or {}
    return {t["propertyName"]: t["reported"]["value"] for t in status.get("twins") or []} == expected


async def _desired(edge: EdgeHub, name: str, prop: str, value: str) -> bool:
    device = (await held(edge, "device")).get(name) or {}
    props = {p["name"]: p for p in (device.get("spec") or {}).get("properties") or []}
    return bool(props.get(prop, {}).get("desired", {}).get("value") == value)
