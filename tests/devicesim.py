"""Simulated devices for the mapper and device tests: pymodbus's own Modbus TCP server."""

from __future__ import annotations

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

HOLDING, INPUT, COIL = 3, 4, 1  # function codes, which pymodbus's datastore uses to name the tables


async def modbus_server(port: int) -> ModbusTcpServer:
    """pymodbus's own TCP server: coils, discrete inputs, holding and input registers 0..15 of unit 1."""
    unit = SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer(unit, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server
