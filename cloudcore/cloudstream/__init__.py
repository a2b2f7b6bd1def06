"""CloudStream: kubectl logs, exec, attach, port-forward and the node proxy for edge nodes, through the tunnel."""

from cloudcore.cloudstream.auth import Authorizer
from cloudcore.cloudstream.broker import StreamBroker, StreamUnavailable
from cloudcore.cloudstream.directory import SessionDirectory
from cloudcore.cloudstream.server import StreamServer, StreamSettings

__all__ = ["Authorizer", "SessionDirectory", "StreamBroker", "StreamServer", "StreamSettings", "StreamUnavailable"]
