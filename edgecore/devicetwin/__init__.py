"""DeviceTwin: the node's devices for the mappers over MQTT, their twins in SQLite, reports to the cloud."""

from edgecore.devicetwin.store import TwinRow, TwinStore
from edgecore.devicetwin.twin import DeviceTwin, NodeDevice

__all__ = ["DeviceTwin", "NodeDevice", "TwinRow", "TwinStore"]
