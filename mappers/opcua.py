"""OPC UA devices, through asyncua (``pip install 'kubage[opcua]'``).

Device ``spec.protocol.configData``: ``{"url": "opc.tcp://host:4840/path", "userName"?, "password"?,
"timeout": 4}`` (no security policies yet: a configData asking for one is refused rather than ignored).
Property visitor ``configData``: ``{"nodeID": "ns=2;i=2"}``.

Reads return the node's value; writes convert the desired string to the node's own data type (read once per
node), so a Double node gets a Double and an Int16 node an Int16 that fits. A lost connection is dropped and
made afresh on the next call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.uaerrors import UaStatusCodeError

from mappers.sdk.errors import DeviceIOError, InvalidConfig
from mappers.sdk.plan import Member
from mappers.sdk.values import Value, parse_bool

_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_REAL = frozenset({ua.VariantType.Float, ua.VariantType.Double})


@dataclass(frozen=True)
class OpcuaTarget:
    url: str
    user: str | None
    password: str | None
    timeout: float

    @classmethod
    def parse(cls, config: dict[str, Any]) -> OpcuaTarget:
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith("opc.tcp://"):
            raise InvalidConfig(f"protocol configData needs url: opc.tcp://host:port/..., got {url!r}")
        for key in ("securityPolicy", "securityMode", "certificate", "privateKey"):
            if config.get(key) not in (None, "", "None"):
                raise InvalidConfig(f"{key} is not supported yet")
        user, password = config.get("userName"), config.get("password")
        timeout = config.get("timeout", 4)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidConfig(f"timeout must be positive seconds, got {timeout!r}")
        return cls(
            url,
            user if isinstance(user, str) and user else None,
            password if isinstance(password, str) else None,
            float(timeout),
        )


def node_id(visitor: dict[str, Any]) -> str:
    nid = visitor.get("nodeID")
    if not isinstance(nid, str) or not nid:
        raise InvalidConfig(f"visitor configData needs nodeID (like 'ns=2;i=2'), got {nid!r}")
    return nid


def to_variant(text: str, variant: ua.VariantType) -> Any:
    """The Python value asyncua writes as ``variant``; ``ValueError`` when ``text`` does not fit it."""
    if variant is ua.VariantType.Boolean:
        return parse_bool(text)
    if variant in _INTEGER_RANGES:
        try:
            number = int(text.strip())
        except ValueError:
            raise InvalidConfig(f"{variant.name} needs an integer, got {text!r}") from None
        low, high = _INTEGER_RANGES[variant]
        if not low <= number <= high:
            raise InvalidConfig(f"{number} does not fit a {variant.name} ({low}..{high})")
        return number
    if variant in _REAL:
        try:
            return float(text.strip())
        except ValueError:
            raise InvalidConfig(f"{variant.name} needs a number, got {text!r}") from None
    if variant is ua.VariantType.String:
        return text
    raise InvalidConfig(f"writing a {variant.name} node is not supported")


def from_node(value: object) -> Value:
    """A node's value as a property value: numbers, booleans and strings as they are, the rest as text."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    if value is None:
        raise DeviceIOError("node has no value")
    return str(value)


class OpcuaDriver:
    def __init__(self) -> None:
        self._target: OpcuaTarget | None = None
        self._client: Client | None = None
        self._variants: dict[str, ua.VariantType] = {}

    async def init(self, device: Member) -> None:
        protocol = (device.get("spec") or {}).get("protocol") or {}
        self._target = OpcuaTarget.parse(protocol.get("configData") or {})
        await self._connected()

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        nid = node_id(visitor)
        client = await self._connected()
        try:
            value = await client.get_node(nid).read_value()
        except UaStatusCodeError as exc:
            raise DeviceIOError(f"reading {nid}: {exc}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            await self._drop()
            raise DeviceIOError(f"reading {nid}: {exc!r}") from exc
        return from_node(value)

    async def write(self, prop: str, visitor: dict[str, Any], value: str) -> None:
        nid = node_id(visitor)
        client = await self._connected()
        node = client.get_node(nid)
        try:
            variant = self._variants.get(nid)
            if variant is None:
                variant = self._variants[nid] = await node.read_data_type_as_variant_type()
            await node.write_value(ua.DataValue(ua.Variant(to_variant(value, variant), variant)))
        except UaStatusCodeError as exc:  # BadNotWritable, BadTypeMismatch, …: retrying will not help
            raise InvalidConfig(f"writing {nid}: {exc}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            await self._drop()
            raise DeviceIOError(f"writing {nid}: {exc!r}") from exc

    async def health(self) -> bool:
        return self._client is not None and self._client.uaclient.state is UaClientState.CONNECTED

    async def stop(self) -> None:
        await self._drop()

    async def _connected(self) -> Client:
        if self._target is None:
            raise DeviceIOError("driver not initialised")
        if self._client is not None and self._client.uaclient.state is not UaClientState.CONNECTED:
            await self._drop()
        if self._client is None:
            client = Client(self._target.url, timeout=self._target.timeout)
            if self._target.user is not None:
                client.set_user(self._target.user)
                if self._target.password is not None:
                    client.set_password(self._target.password)
            try:
                await client.connect()
            except (ConnectionError, TimeoutError, OSError, UaStatusCodeError) as exc:
                raise DeviceIOError(f"cannot connect to {self._target.url}: {exc!r}") from exc
            self._client = client
        return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # the connection is gone either way
                await client.disconnect()
