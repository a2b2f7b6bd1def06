"""The MQTT client's tests run on both loops: EdgeCore runs on uvloop, whose transports differ from asyncio's
(a uvloop TCP transport is no ``asyncio.Transport`` subclass), and pytest-asyncio's default is asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
