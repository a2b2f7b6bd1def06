"""DeviceTwin: the node's devices for the mappers over MQTT, their twins in SQLite, reports to the cloud."""

from edgecore.devicetwin.model import NodeDevice
from edgecore.devicetwin.store import TwinRow, TwinStore
from edgecore.devicetwin.twin import DeviceTwin

__all__ = ["DeviceTwin", "NodeDevice", "TwinRow", "TwinStore"]
