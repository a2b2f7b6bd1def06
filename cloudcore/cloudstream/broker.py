"""StreamBroker: ask a connected edge for a stream, and pair the connection it dials back with the request.

``open(node)`` sends the node a stream request (id and one-time token) on its hub session and waits at most
``dial_timeout`` for the edge to connect to ``/streams/<id>``; CloudHub hands that connection to ``accept``,
which checks that the certificate's node and the token are the ones asked for and keeps the connection open
until the stream is over. At most ``max_per_node`` streams per node are open or being opened at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from common.hublink import now_ms
from common.logging import get_logger
from common.messages import Message, NodeName
from common.protocol.session import CloseCode
from common.streams import Pipe, StreamError, StreamRequest, stream_id_of

log = get_logger(__name__)

Send = Callable[[NodeName, Message], Awaitable[bool]]  # CloudHub.send: False when the node is not connected


class StreamUnavailable(Exception):
    """No stream to the node: ``status`` is the HTTP status to answer the client with, the message why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Waiting:
    node: NodeName
    token: str
    connected: asyncio.Future[ServerConnection]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class StreamBroker:
    def __init__(self, send: Send, *, dial_timeout: float = 10.0, max_per_node: int = 16) -> None:
        self._send = send
        self._dial_timeout = dial_timeout
        self._max = max_per_node
        self._waiting: dict[str, _Waiting] = {}
        self._open: collections.Counter[NodeName] = collections.Counter()
        self.opened = 0
        self.refused = 0

    def open_streams(self, node: NodeName) -> int:
        return self._open[node]

    @contextlib.asynccontextmanager
    async def open(self, node: NodeName) -> AsyncIterator[Pipe]:
        """A stream to ``node``'s EdgeCore, for as long as the block runs; StreamUnavailable if there is none."""
        if self._open[node] >= self._max:
            self.refused += 1
            raise StreamUnavailable(429, f"node {node} has {self._max} streams open already, the most it may have")
        request = StreamRequest.new()
        waiting = _Waiting(node, request.token, asyncio.get_running_loop().create_future())
        self._waiting[request.id] = waiting
        self._open[node] += 1
        try:
            if not await self._send(node, request.message(now_ms=now_ms())):
                raise StreamUnavailable(502, f"node {node} is not connected to this CloudCore")
            try:
                async with asyncio.timeout(self._dial_timeout):
                    ws = await waiting.connected
            except TimeoutError:
                raise StreamUnavailable(
                    502, f"node {node} did not open the stream within {self._dial_timeout:g} s"
                ) from None
            self.opened += 1
            yield Pipe(ws)
        finally:
            del self._waiting[request.id]
            self._open[node] -= 1
            if self._open[node] <= 0:
                del self._open[node]
            waiting.done.set()

    async def accept(self, node: NodeName, ws: ServerConnection, path: str, token: str) -> None:
        """A stream connection an edge dialled back: paired with its request, held open until the stream ends."""
        try:
            waiting = self._waiting.get(stream_id_of(path))
        except StreamError as exc:
            await ws.close(CloseCode.POLICY_VIOLATION, str(exc))
            return
        if waiting is None or waiting.connected.done():
            await ws.close(CloseCode.POLICY_VIOLATION, "no stream is waiting at this path")
            return
        if waiting.node != node or not hmac.compare_digest(waiting.token, token):
            log.warning("stream_refused", node=node, asked=waiting.node, reason="wrong node or token")
            await ws.close(CloseCode.POLICY_VIOLATION, "this stream was not asked of this node")
            return
        waiting.connected.set_result(ws)
        await waiting.done.wait()  # the handler returning would close the connection
