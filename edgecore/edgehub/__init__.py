"""EdgeHub: the edge's end of the tunnel to CloudCore."""

from edgecore.edgehub.hub import EdgeHub, EdgeHubSettings

__all__ = ["EdgeHub", "EdgeHubSettings"]
