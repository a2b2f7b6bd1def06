"""Sedna's global manager in CloudCore: federated learning jobs, their pods, status and weights."""

from cloudcore.edgecontroller.upstream import Refused
from cloudcore.globalmanager.manager import GlobalManager

__all__ = ["GlobalManager", "Refused"]
