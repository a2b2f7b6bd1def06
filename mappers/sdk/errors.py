"""The two ways a driver call fails, by what the caller should do about it."""

from __future__ import annotations


class DeviceIOError(Exception):
    """The device did not answer as asked (disconnected, timed out, refused): try again later."""


class InvalidConfig(ValueError):
    """A configData, membership entry or value that retrying cannot fix: refuse it and say why."""
