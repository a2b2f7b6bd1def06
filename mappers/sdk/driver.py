"""The driver interface a protocol implements, and how a mapper finds the driver for its protocol.

One driver instance serves one device: the runner creates it, calls ``init`` with the device's membership
entry, then ``read``/``write`` per property from a single task (never concurrently), and ``stop`` once at the end.
Drivers are plugins: an entry point in the group ``kubage.mappers`` named after ``spec.protocol.protocolName``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol, cast, runtime_checkable

from mappers.sdk.errors import DeviceIOError, InvalidConfig
from mappers.sdk.plan import Member
from mappers.sdk.values import Value

__all__ = ["DeviceDriver", "DeviceIOError", "DriverFactory", "DriverNotFound", "InvalidConfig", "load_driver"]

ENTRY_POINT_GROUP = "kubage.mappers"


@runtime_checkable
class DeviceDriver(Protocol):
    """Errors: ``ValueError`` (``InvalidConfig``) for what retrying cannot fix (a bad configData, a value the
    property's type cannot hold, a read-only register); anything else (``DeviceIOError`` by preference) is a
    failure the runner retries: ``init`` with backoff, reads on the next cycle, writes on the next collect."""

    async def init(self, device: Member) -> None:
        """Parse the device's ``spec.protocol.configData`` and connect. Raise to be retried with backoff."""

    async def read(self, prop: str, visitor: dict[str, Any]) -> Value:
        """Read one property; ``visitor`` is the property's ``visitors.configData``."""

    async def write(self, prop: str, visitor: dict[str, Any], value: str) -> None:
        """Write a desired value, given as its wire string; the driver converts it to the property's type."""

    async def health(self) -> bool:
        """Whether the device is reachable now: the runner reports it as the device's online/offline state."""

    async def stop(self) -> None:
        """Disconnect and release everything; called once, also after a failed ``init``."""


DriverFactory = Callable[[], DeviceDriver]


class DriverNotFound(LookupError):
    pass


def installed_protocols() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_driver(protocol: str) -> DriverFactory:
    """The driver class registered for ``protocol``. ``DriverNotFound`` says what is installed instead."""
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=protocol))
    if not found:
        raise DriverNotFound(
            f"no mapper driver for protocol {protocol!r}; installed: {', '.join(installed_protocols()) or 'none'}"
        )
    try:
        driver = found[0].load()
    except ImportError as exc:
        raise DriverNotFound(
            f"the {protocol!r} driver needs its extra: pip install 'kubage[{protocol}]' ({exc})"
        ) from exc
    if not callable(driver):
        raise DriverNotFound(f"entry point {found[0].value!r} for {protocol!r} is not a driver class")
    return cast(DriverFactory, driver)
