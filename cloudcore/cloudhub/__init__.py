"""CloudHub: the WebSocket server every EdgeCore connects to."""

from cloudcore.cloudhub.hub import CloudHub, HubSettings, NodeStats, Totals

__all__ = ["CloudHub", "HubSettings", "NodeStats", "Totals"]
