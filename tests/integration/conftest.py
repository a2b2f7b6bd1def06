"""Device servers for the integration tests: a Modbus PLC and an OPC UA server, each on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncua import ua
from asyncua.server.server import Server
from pymodbus.server import ModbusTcpServer

from scripts.harness.procs import free_port
from tests.devicesim import modbus_server


@pytest.fixture
async def modbus() -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    port = free_port()
    server = await modbus_server(port)
    try:
        yield server, port
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


@pytest.fixture
async def opcua() -> AsyncIterator[tuple[Server, str, dict[str, Any]]]:
    """An asyncua server with a thermostat object: temperature (read-only), setpoint and enabled (writable)."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/kubage/"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:kubage:test")
    thermo = await server.nodes.objects.add_object(ns, "Thermostat")
    nodes = {
        "temperature": await thermo.add_variable(ns, "temperature", 21.5, ua.VariantType.Double),
        "setpoint": await thermo.add_variable(ns, "setpoint", 20.0, ua.VariantType.Double),
        "enabled": await thermo.add_variable(ns, "enabled", False, ua.VariantType.Boolean),
    }
    await nodes["setpoint"].set_writable()
    await nodes["enabled"].set_writable()
    await server.start()
    try:
        yield server, url, nodes
    finally:
        await server.stop()
