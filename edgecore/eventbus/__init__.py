"""EventBus: EdgeCore's MQTT client for the node's device mappers."""

from edgecore.eventbus.bus import EventBus, EventBusSettings, parse_server

__all__ = ["EventBus", "EventBusSettings", "parse_server"]
