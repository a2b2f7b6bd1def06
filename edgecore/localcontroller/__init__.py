"""Sedna's local controller on this node: the learning lib's endpoint and the data loader."""

from edgecore.localcontroller.controller import LocalController

__all__ = ["LocalController"]
