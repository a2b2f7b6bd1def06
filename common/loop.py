"""Run the process's main coroutine on uvloop when it is installed, on asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: which loop ``run`` will use, for logs and benchmark tables."""
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415
        except ImportError:
            # Works, but asyncio's own TLS costs ~4x the memory per connection (benchmarks/tunnel.py).
            logging.getLogger(__name__).warning("uvloop is not installed: running on asyncio's own loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)
