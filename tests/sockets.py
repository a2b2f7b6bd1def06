"""The sockets an asyncio loop holds open: for checks that a test, or the code under it, closed what it opened."""

from __future__ import annotations

import asyncio


def open_sockets(loop: asyncio.AbstractEventLoop) -> list[asyncio.Transport]:
    """The loop's transports whose socket is still open (the selector loop's; uvloop's are not listed)."""
    # _transports (fd -> transport) is the selector loop's own registry; nothing public lists a loop's sockets.
    transports: dict[int, asyncio.Transport] = getattr(loop, "_transports", {})
    return [t for t in list(transports.values()) if (s := t.get_extra_info("socket")) is not None and s.fileno() >= 0]
