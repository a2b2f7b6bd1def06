"""Edged's CRI client: the ``ContainerRuntime`` over gRPC to containerd (CRI ``runtime.v1``).

``api.proto`` is our own subset of the CRI; ``make proto`` generates the ``api_pb2*`` stubs next to it.
"""

from edgecore.edged.cri.client import CriRuntime

__all__ = ["CriRuntime"]
