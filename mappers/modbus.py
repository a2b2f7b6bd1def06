"""Modbus TCP devices, through pymodbus (``pip install 'kubage[modbus]'``).

Device ``spec.protocol.configData``: ``{"host" (or KubeEdge's "ip"), "port": 502, "slaveID": 1, "timeout": 3}``.

Property visitor ``configData``, with the names of KubeEdge's modbus mapper:
``{"register": "HoldingRegister" | "InputRegister" | "Coil" | "DiscreteInput", "offset": 0, "limit": 1,
"scale": 1, "isSwap": false, "isRegisterSwap": false}`` plus, beyond KubeEdge, ``"add"`` (alias
``"offset_value"``, added after scaling) and ``"dataType"`` (int16, uint16, int32, uint32, int64, uint64,
float32, float64; default: unsigned over ``limit`` registers). KubeEdge's ``CoilRegister`` and
``DiscreteInputRegister`` spellings are accepted too.

A reading is ``raw * scale + add``; a write reverses it (rounding to the register's integer). ``limit``
registers form one big-endian number; ``isRegisterSwap`` reverses the register order, ``isSwap`` the two bytes
inside each register. Coils and discrete inputs are booleans.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from mappers.sdk.errors import DeviceIOError, InvalidConfig
from mappers.sdk.plan import Member
from mappers.sdk.values import INTEGER_TYPES, REAL_TYPES, Value, format_value, parse_bool, wire_type

# Every spelling a user may copy from KubeEdge's docs → the canonical table name.
TABLES = {
    "HoldingRegister": "HoldingRegister",
    "InputRegister": "InputRegister",
    "Coil": "Coil",
    "CoilRegister": "Coil",
    "DiscreteInput": "DiscreteInput",
    "DiscreteInputRegister": "DiscreteInput",
}
BIT_TABLES = frozenset({"Coil", "DiscreteInput"})
WRITABLE_TABLES = frozenset({"HoldingRegister", "Coil"})
DATA_TYPES = {  # struct format (big-endian), registers
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "int64": (">q", 4),
    "uint64": (">Q", 4),
    "float32": (">f", 2),
    "float64": (">d", 4),
}
_UNSIGNED_BY_LIMIT = {1: "uint16", 2: "uint32", 4: "uint64"}


@dataclass(frozen=True)
class RegisterVisitor:
    table: str
    offset: int
    limit: int
    scale: Decimal
    add: Decimal
    swap_bytes: bool
    swap_registers: bool
    data_type: str

    @classmethod
    def parse(cls, config: dict[str, Any]) -> RegisterVisitor:
        """Validate a visitor's configData; ``ValueError`` names the bad field."""
        table = TABLES.get(config.get("register", ""))
        if table is None:
            raise InvalidConfig(f"register must be one of {', '.join(TABLES)}, got {config.get('register')!r}")
        offset = _integer(config.get("offset", 0), "offset")
        if not 0 <= offset <= 0xFFFF:
            raise InvalidConfig(f"offset must be 0..65535, got {offset}")
        data_type = config.get("dataType")
        if data_type is not None and data_type not in DATA_TYPES:
            raise InvalidConfig(f"dataType must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
        default_limit = DATA_TYPES[data_type][1] if data_type else 1
        limit = _integer(config.get("limit", default_limit), "limit")
        if table in BIT_TABLES:
            if limit != 1:
                raise InvalidConfig(f"a {table} property reads one bit: limit must be 1, got {limit}")
            data_type = "bit"
        elif data_type is None:
            if limit not in _UNSIGNED_BY_LIMIT:
                raise InvalidConfig(f"limit must be 1, 2 or 4 registers, got {limit}")
            data_type = _UNSIGNED_BY_LIMIT[limit]
        elif limit != DATA_TYPES[data_type][1]:
            raise InvalidConfig(f"dataType {data_type} takes {DATA_TYPES[data_type][1]} registers, limit says {limit}")
        if "add" in config and "offset_value" in config:
            raise InvalidConfig("give either add or offset_value, not both")
        scale = _decimal(config.get("scale", 1), "scale")
        return cls(
            table=table,
            offset=offset,
            limit=limit,
            scale=scale if scale != 0 else Decimal(1),  # KubeEdge omits a zero scale: it means "unscaled"
            add=_decimal(config.get("add", config.get("offset_value", 0)), "add"),
            swap_bytes=_flag(config.get("isSwap", False), "isSwap"),
            swap_registers=_flag(config.get("isRegisterSwap", False), "isRegisterSwap"),
            data_type=data_type,
        )

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def writable(self) -> bool:
        return self.table in WRITABLE_TABLES

    def decode(self, raw: Sequence[int] | Sequence[bool], type_name: str) -> Value:
        """The property value of what the device returned: registers, or bits for coils."""
        if self.is_bit:
            return _shape_bool(bool(raw[0]), type_name)
        words = [int(w) for w in raw[: self.limit]]
        if len(words) != self.limit:
            raise DeviceIOError(f"device returned {len(words)} registers, expected {self.limit}")
        fmt, _ = DATA_TYPES[self.data_type]
        number = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in self._arrange(words)))[0]
        if isinstance(number, float):
            # float32 carries ~7 significant digits; print what the device meant, not binary noise
            text = f"{number:.7g}" if self.data_type == "float32" else repr(number)
            value = Decimal(text) * self.scale + self.add
        else:
            value = Decimal(number) * self.scale + self.add
        return _shape_number(value, type_name, integral=self.data_type not in ("float32", "float64"))

    def encode(self, text: str, type_name: str) -> list[int] | bool:
        """The registers (or the coil state) that make the device read back ``text``. ``ValueError`` if none."""
        if not self.writable:
            raise InvalidConfig(f"a {self.table} is read-only")
        if self.is_bit:
            return parse_bool(text)
        if type_name == "boolean":
            desired = Decimal(1) if parse_bool(text) else Decimal(0)
        else:
            try:
                desired = Decimal(text.strip())
            except InvalidOperation:
                raise InvalidConfig(f"not a number: {text!r}") from None
            if not desired.is_finite():
                raise InvalidConfig(f"not a finite number: {text!r}")
        raw = (desired - self.add) / self.scale
        fmt, _ = DATA_TYPES[self.data_type]
        number: int | float = float(raw) if fmt[-1] in "fd" else int(raw.to_integral_value(ROUND_HALF_EVEN))
        try:
            packed = struct.pack(fmt, number)
        except struct.error:
            raise InvalidConfig(f"{text} needs raw {number}, which a {self.data_type} register cannot hold") from None
        words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
        return self._arrange(words)

    def _arrange(self, words: list[int]) -> list[int]:
        """Wire order ↔ big-endian order; its own inverse."""
        if self.swap_registers:
            words = words[::-1]
        if self.swap_bytes:
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        return words


@dataclass(frozen=True)
class ModbusTarget:
    host: str
    port: int
    slave: int
    timeout: float

    @classmethod
    def parse(cls, config: dict[str, Any]) -> ModbusTarget:
        host = config.get("host") or config.get("ip")
        if not isinstance(host, str) or not host:
            raise InvalidConfig("protocol configData needs host (or ip)")
        port = _integer(config.get("port", 502), "port")
        slave = _integer(config.get("slaveID", 1), "slaveID")
        timeout = float(_decimal(config.get("timeout", 3), "timeout"))
        if not 0 < port < 65536 or not 0 <= slave <= 255 or timeout <= 0:
            raise InvalidConfig(f"bad port {port}, slaveID {slave} or timeout {timeout}")
        return cls(host, port, slave, timeout)


class ModbusDriver:
    def __init__(self) -> None:
        self._client: AsyncModbusTcpClient | None = None
        self._target: ModbusTarget | None = None
        self._types: dict[str, str] = {}
        self._visitors: dict[str, RegisterVisitor] = {}

    async def init(self, device: Member) -> None:
        protocol = (device.get("spec") or {}).get("protocol") or {}
        self._target = target = ModbusTarget.parse(protocol.get("configData") or {})
        model = (device.get("model") or {}).get("properties") or []
        self._types = {p["name"]: wire_type(p.get("type")) for p in model if isinstance(p, dict) and "name" in p}
        if self._client is None:
            # reconnect_delay=0: no reconnect loop inside pymodbus; the next read reconnects instead
            self._client = AsyncModbusTcpClient(
                target.host, port=target.port, timeout=target.timeout, retries=1, reconnect_delay=0, name=device["id"]
            )
        await self._connected()

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        register = self._visitor(prop, visitor)
        client, slave = await self._connected(), self._slave()
        address, count = register.offset, register.limit
        try:
            if register.table == "HoldingRegister":
                response = await client.read_holding_registers(address, count=count, device_id=slave)
            elif register.table == "InputRegister":
                response = await client.read_input_registers(address, count=count, device_id=slave)
            elif register.table == "Coil":
                response = await client.read_coils(address, count=count, device_id=slave)
            else:
                response = await client.read_discrete_inputs(address, count=count, device_id=slave)
        except ModbusException as exc:
            raise DeviceIOError(str(exc)) from exc
        _check(response)
        return register.decode(response.bits if register.is_bit else response.registers, self._type(prop))

    async def write(self, prop: str, visitor: dict[str, Any], value: str) -> None:
        register = self._visitor(prop, visitor)
        payload = register.encode(value, self._type(prop))
        client, slave = await self._connected(), self._slave()
        try:
            if isinstance(payload, bool):
                response = await client.write_coil(register.offset, payload, device_id=slave)
            elif len(payload) == 1:
                response = await client.write_register(register.offset, payload[0], device_id=slave)
            else:
                response = await client.write_registers(register.offset, payload, device_id=slave)
        except ModbusException as exc:
            raise DeviceIOError(str(exc)) from exc
        _check(response)

    async def health(self) -> bool:
        return self._client is not None and self._client.connected

    async def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is None or self._target is None:
            raise DeviceIOError("driver not initialised")
        if not self._client.connected and not await self._client.connect():
            raise DeviceIOError(f"cannot connect to {self._target.host}:{self._target.port}")
        return self._client

    def _slave(self) -> int:
        return self._target.slave if self._target is not None else 1

    def _visitor(self, prop: str, config: dict[str, Any]) -> RegisterVisitor:
        register = self._visitors.get(prop)
        if register is None:
            register = self._visitors[prop] = RegisterVisitor.parse(config)
        return register

    def _type(self, prop: str) -> str:
        return self._types.get(prop, "string")


def _check(response: ModbusPDU) -> None:
    if response.isError():
        raise DeviceIOError(f"device answered with an exception: {response}")


def _shape_bool(bit: bool, type_name: str) -> Value:
    if type_name in INTEGER_TYPES:
        return int(bit)
    if type_name in REAL_TYPES:
        return float(bit)
    return bit


def _shape_number(value: Decimal, type_name: str, *, integral: bool) -> Value:
    if type_name == "boolean":
        return value != 0
    if type_name in INTEGER_TYPES:
        return int(value.to_integral_value(ROUND_HALF_EVEN))
    if type_name in REAL_TYPES:
        return float(value)
    if integral and value == value.to_integral_value():
        return format_value(int(value), type_name)
    return format_value(float(value), type_name)


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidConfig(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidConfig(f"{what} must be an integer, got {value!r}")


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidConfig(f"{what} must be a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())  # str(): 0.1 stays 0.1, not its binary expansion
    except InvalidOperation:
        raise InvalidConfig(f"{what} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise InvalidConfig(f"{what} must be finite, got {value!r}")
    return number


def _flag(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(value)
    raise InvalidConfig(f"{what} must be true or false, got {value!r}")
