"""EdgeStream: serves CloudCore's stream requests (kubectl logs, exec, attach, port-forward, the node proxy)."""

from edgecore.edgestream.stream import EdgeStream

__all__ = ["EdgeStream"]
