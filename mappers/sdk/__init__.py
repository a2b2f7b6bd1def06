"""The mapper SDK: the driver interface, the per-device task and the MQTT runner."""

from mappers.sdk.driver import DeviceDriver, DriverFactory, DriverNotFound, load_driver
from mappers.sdk.errors import DeviceIOError, InvalidConfig
from mappers.sdk.plan import DevicePlan, Member, PropertyPlan, plan_device
from mappers.sdk.runner import Broker, MapperRunner
from mappers.sdk.values import Value, format_value, parse_value

__all__ = [
    "Broker",
    "DeviceDriver",
    "DeviceIOError",
    "DevicePlan",
    "DriverFactory",
    "DriverNotFound",
    "InvalidConfig",
    "MapperRunner",
    "Member",
    "PropertyPlan",
    "Value",
    "format_value",
    "load_driver",
    "parse_value",
    "plan_device",
]
