"""A loopback TCP proxy that injects network faults between an edge client and a cloud server in tests.

Point the client at ``FaultProxy.port`` instead of the server, then call ``delay``, ``blackhole``, ``refuse`` or
``cut`` to make the link slow, silent, unreachable or broken, and ``heal`` to undo all but ``cut``. Bytes are never
dropped piecemeal or reordered, so TLS and WebSocket framing on top stay intact. ``loss`` stands in for packet loss
as TCP shows it to the application: the bytes behind a lost packet arrive a retransmission timeout late. Every task
the proxy starts is cancelled and awaited by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct

_DIRECTIONS = ("up", "down")
_CHUNK = 64 * 1024
_QUEUED_CHUNKS = 64  # back-pressure on a delayed direction: at most this many chunks wait in the proxy
_MSS = 1448  # bytes of payload per TCP segment on an Ethernet path: what one lost packet holds back


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection abruptly: RST rather than FIN, so the peer sees a reset like a broken link."""
    transport = writer.transport
    sock = writer.get_extra_info("socket")
    if sock is not None and not transport.is_closing():
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Connection:
    """One proxied client connection: its upstream writer once connected, and the task that serves it."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class FaultProxy:
    """TCP proxy from ``listen_host:port`` (an ephemeral port) to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_host = listen_host
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closed = False
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._delay = dict.fromkeys(_DIRECTIONS, 0.0)
        self._blackhole = dict.fromkeys(_DIRECTIONS, False)
        self._refuse = False
        self._loss = dict.fromkeys(_DIRECTIONS, (0.0, 0.0))  # (per-packet loss rate, retransmission timeout)
        self._random = random.Random(0)  # a fault model, seeded: the same run twice
        self.losses = 0
        self.bytes_up = 0
        self.bytes_down = 0

    async def start(self) -> None:
        if self._server is not None or self._closed:
            raise RuntimeError("FaultProxy can be started only once")
        self._server = await asyncio.start_server(self._accept, self._listen_host, 0)
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy.start() has not been called")
        return self._port

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        self.cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- faults -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _directions(direction: str) -> tuple[str, ...]:
        if direction == "both":
            return _DIRECTIONS
        if direction in _DIRECTIONS:
            return (direction,)
        raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")

    def delay(self, seconds: float, direction: str = "both") -> None:
        if seconds < 0:
            raise ValueError(f"delay must not be negative, got {seconds}")
        for d in self._directions(direction):
            self._delay[d] = seconds

    def loss(self, rate: float, rto: float = 0.2, direction: str = "both") -> None:
        """Each packet's worth of bytes (one MSS) is lost with probability ``rate``: its chunk, and everything
        behind it (head-of-line, as in TCP), arrives ``rto`` seconds late (Linux's minimum RTO is 200 ms)."""
        if not 0 <= rate < 1 or rto < 0:
            raise ValueError(f"loss needs 0 <= rate < 1 and rto >= 0, got {rate}, {rto}")
        for d in self._directions(direction):
            self._loss[d] = (rate, rto)

    def _late(self, direction: str, size: int) -> float:
        rate, rto = self._loss[direction]
        if not rate or not size:
            return 0.0
        if self._random.random() < 1 - (1 - rate) ** math.ceil(size / _MSS):
            self.losses += 1
            return rto
        return 0.0

    def blackhole(self, direction: str = "both") -> None:
        for d in self._directions(direction):
            self._blackhole[d] = True

    def refuse(self, enabled: bool = True) -> None:
        self._refuse = enabled

    def cut(self) -> None:
        for conn in list(self._conns):
            conn.reset()
            if conn.task is not None:
                conn.task.cancel()
        self._conns.clear()

    def heal(self) -> None:
        self._delay = dict.fromkeys(_DIRECTIONS, 0.0)
        self._blackhole = dict.fromkeys(_DIRECTIONS, False)
        self._loss = dict.fromkeys(_DIRECTIONS, (0.0, 0.0))
        self._refuse = False

    # -- forwarding -------------------------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the task is created and tracked here, so close() can never miss it.
        if self._closed or self._refuse:
            _reset(writer)
            return
        conn = _Connection(writer)
        self._conns.add(conn)
        conn.task = asyncio.create_task(self._serve(conn, reader), name=f"faultproxy-{self._port}")
        self._tasks.add(conn.task)
        conn.task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        try:
            upstream_reader, conn.upstream = await asyncio.open_connection(*self._upstream)
            async with asyncio.TaskGroup() as group:  # cancelling this task cancels and awaits the pumps
                group.create_task(self._pump(client_reader, conn.upstream, "up"))
                group.create_task(self._pump(upstream_reader, conn.client, "down"))
            for writer in (conn.client, conn.upstream):  # both sides said EOF: flush what is left, then FIN
                writer.close()
            for writer in (conn.client, conn.upstream):
                await writer.wait_closed()
        except* OSError:
            pass  # refused upstream, or a reset on either side: the whole connection goes
        finally:
            self._conns.discard(conn)
            conn.reset()  # a no-op after a clean close; otherwise (error, cut, close) reset both sides

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Read one direction into a queue stamped with due times; a second task forwards in order when due."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                data = await reader.read(_CHUNK)
                if not self._blackhole[direction]:  # a silent link swallows EOF too
                    late = self._late(direction, len(data))
                    await queue.put((loop.time() + self._delay[direction] + late, data))
                if not data:
                    return

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if (remaining := due - loop.time()) > 0:
                    await asyncio.sleep(remaining)
                if self._blackhole[direction]:
                    if not data:
                        return
                    continue
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(forward())
