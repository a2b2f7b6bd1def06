"""The fault-injection proxy used by integration tests, checked against a tiny echo server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from tests.faultproxy import FaultProxy


class EchoServer:
    """Echoes every byte back; tracks its handler tasks so tests can tell them apart from the proxy's."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


@contextlib.asynccontextmanager
async def client(proxy: FaultProxy) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 2)


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_echo_passes_through_and_is_counted(proxy: FaultProxy) -> None:
    async with client(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"hello") == b"hello"
        assert proxy.connections == 1
        big = bytes(range(256)) * 1024
        assert await round_trip(reader, writer, big) == big
    assert proxy.bytes_up == proxy.bytes_down == 5 + len(big)
    await wait_for(lambda: proxy.connections == 0)


async def test_half_close_passes_through_and_a_clean_end_loses_no_bytes(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than any socket buffer
    async with client(proxy) as (reader, writer):
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == payload
    await wait_for(lambda: proxy.connections == 0)


async def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    loop = asyncio.get_running_loop()
    async with client(proxy) as (reader, writer):
        proxy.delay(0.1)
        start = loop.time()
        assert await round_trip(reader, writer, b"slow") == b"slow"
        assert loop.time() - start >= 0.2
        proxy.delay(0.1, "up")
        proxy.delay(0.0, "down")
        start = loop.time()
        assert await round_trip(reader, writer, b"half") == b"half"
        assert 0.1 <= loop.time() - start < 0.2


async def test_delay_preserves_order_when_it_shrinks(proxy: FaultProxy) -> None:
    async with client(proxy) as (reader, writer):
        proxy.delay(0.1, "up")
        writer.write(b"first-")
        await writer.drain()
        await asyncio.sleep(0.01)  # let the proxy read "first-" while it is still delayed
        proxy.heal()
        writer.write(b"second")
        assert await asyncio.wait_for(reader.readexactly(12), 2) == b"first-second"


async def test_blackhole_keeps_the_link_open_but_silent_until_healed(proxy: FaultProxy) -> None:
    async with client(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"warm") == b"warm"
        proxy.blackhole("down")
        writer.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        assert proxy.connections == 1
        assert proxy.bytes_up == 8
        assert proxy.bytes_down == 4
        proxy.heal()
        assert await round_trip(reader, writer, b"back") == b"back"


async def test_cut_resets_every_connection_but_allows_new_ones(proxy: FaultProxy) -> None:
    async with client(proxy) as (r1, w1), client(proxy) as (r2, w2):
        assert await round_trip(r1, w1, b"one") == b"one"
        assert await round_trip(r2, w2, b"two") == b"two"
        assert proxy.connections == 2
        proxy.cut()
        assert proxy.connections == 0
        for reader in (r1, r2):
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(100), 1) == b""
    async with client(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"again") == b"again"


async def test_refuse_closes_new_connections_at_once(proxy: FaultProxy) -> None:
    proxy.refuse()
    async with client(proxy) as (reader, _):
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(100), 1) == b""
    assert proxy.connections == 0
    proxy.refuse(False)
    async with client(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"open") == b"open"


async def test_close_cuts_connections_and_leaves_no_tasks(echo: EchoServer) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    async with client(proxy) as (reader, writer):
        assert await round_trip(reader, writer, b"x") == b"x"
        proxy.delay(0.5)  # leave a forwarder sleeping on a queued chunk
        writer.write(b"pending")
        await asyncio.sleep(0.01)
        await proxy.close()
        leftover = asyncio.all_tasks() - before - echo.tasks
        assert not leftover
        assert proxy.connections == 0
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(100), 1) == b""
    await proxy.close()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_unreachable_upstream_closes_the_client() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with FaultProxy("127.0.0.1", dead_port) as proxy, client(proxy) as (reader, _):
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(100), 1) == b""
        await wait_for(lambda: proxy.connections == 0)


def test_rejects_unknown_direction() -> None:
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="direction"):
        proxy.delay(0.1, "sideways")
    with pytest.raises(ValueError, match="direction"):
        proxy.blackhole("left")
