"""EdgeStream: for each stream request CloudCore sends on the hub session, dial back a stream connection and
serve the kubelet request that arrives on it (``KubeletApi``).

Requests wait in a bounded queue and run in this module's TaskGroup, at most ``max_streams`` at once; one
past that is answered 429 on its own connection so the user sees why. A stream ends when either side closes
it; nothing of it outlives EdgeCore.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from common import httphead
from common.logging import get_logger
from common.messages import Message
from common.streams import TOKEN_HEADER, Pipe, StreamError, StreamRequest, is_stream_request, parse_request
from edgecore.edgestream.kubelet import KubeletApi

log = get_logger(__name__)

Dial = Callable[[str, dict[str, str]], Awaitable[ClientConnection]]  # EdgeHub.dial(path, headers)
QUEUED = 64  # requests not yet started; beyond this CloudCore's request times out (it waits 10 s)


class EdgeStream:
    def __init__(self, *, api: KubeletApi, dial: Dial, max_streams: int = 32) -> None:
        self._api = api
        self._dial = dial
        self._max = max_streams
        self._queue: asyncio.Queue[StreamRequest] = asyncio.Queue(QUEUED)
        self.active = 0
        self.served = 0

    async def on_message(self, message: Message) -> None:
        """A best-effort message from the cloud; stream requests are queued, the rest ignored."""
        if not is_stream_request(message):
            log.info("cloud_message_unhandled", operation=message.route.operation, resource=message.route.resource)
            return
        try:
            request = parse_request(message)
        except StreamError as exc:
            log.warning("stream_request_refused", reason=str(exc))
            return
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            log.warning("stream_request_dropped", stream=request.id, queued=QUEUED)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                request = await self._queue.get()
                group.create_task(self._serve(request), name=f"edgestream.{request.id[:8]}")

    async def _serve(self, request: StreamRequest) -> None:
        try:
            ws = await self._dial(request.path, {TOKEN_HEADER: request.token})
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("stream_dial_failed", stream=request.id, error=str(exc) or type(exc).__name__)
            return
        pipe = Pipe(ws)
        self.active += 1
        try:
            head = httphead.parse(await pipe.read())
            if self.active > self._max:
                await pipe.write(httphead.response(429, f"too many streams on this node (at most {self._max})\n"))
                return
            log.info("stream_opened", stream=request.id, method=head.method, path=head.path)
            await self._api.serve(head, pipe)
            self.served += 1
        except (ConnectionClosed, StreamError, httphead.HeadError) as exc:
            log.info("stream_ended", stream=request.id, reason=str(exc) or type(exc).__name__)
        finally:
            self.active -= 1
            with contextlib.suppress(Exception):
                await pipe.close()
