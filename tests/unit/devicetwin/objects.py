"""Devices, models and recorders shared by the DeviceTwin tests (unit and integration)."""

from __future__ import annotations

from typing import Any

from common import upstream

NODE = "edge-dt"
NAMESPACE = "default"


def thermometer_model(name: str = "thermometer", rv: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-model-{name}", "resourceVersion": str(rv)},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly", "unit": "°C"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": "5", "maximum": "30"},
                {"name": "enabled", "type": "BOOLEAN", "accessMode": "ReadWrite"},
                {"name": "label", "type": "STRING", "accessMode": "ReadWrite"},
            ],
        },
    }


def thermometer(
    name: str, *, node: str = NODE, setpoint: str | None = "21", rv: int = 1, model: str = "thermometer"
) -> dict[str, Any]:
    setpoint_property: dict[str, Any] = {
        "name": "setpoint",
        "visitors": {"protocolName": "modbus", "configData": {"register": "HoldingRegister", "offset": 1}},
    }
    if setpoint is not None:
        setpoint_property["desired"] = {"value": setpoint, "metadata": {"type": "int"}}
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "resourceVersion": str(rv)},
        "spec": {
            "deviceModelRef": {"name": model},
            "nodeName": node,
            "protocol": {"protocolName": "modbus", "configData": {"host": "127.0.0.1", "port": 5020}},
            "properties": [
                {
                    "name": "temperature",
                    "visitors": {"protocolName": "modbus", "configData": {"register": "InputRegister", "offset": 0}},
                    "reportCycle": 1000,
                    "collectCycle": 1000,
                    "reportToCloud": True,
                },
                setpoint_property,
                {"name": "enabled", "visitors": {"protocolName": "modbus", "configData": {"register": "Coil"}}},
                {"name": "label", "visitors": {"protocolName": "modbus", "configData": {"register": "Holding"}}},
            ],
        },
    }


class Upstream:
    """A stand-in for ``EdgeHub.publish``."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def __call__(self, *messages: upstream.Upstream) -> None:
        self.items.extend(
            {"key": m.key, "group": m.group, "operation": m.operation, "resource": m.resource, "content": m.content}
            for m in messages
        )

    def keys(self) -> list[str]:
        return [item["key"] for item in self.items]
