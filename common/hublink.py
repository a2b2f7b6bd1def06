"""The I/O around one hub session: drives a sans-I/O ``CloudSession`` or ``EdgeSession`` over a websockets
connection. Both CloudHub and EdgeHub use it; they differ only in how they handle the session's events.

Three tasks per connection, all cancelled together when any of them ends:
  reader     frames in → decode → ``session.receive`` → events onto a bounded queue (full: reading pauses,
             and TCP pushes back on the peer)
  consumer   handles events in order (apply to the store, hand to a controller), then acks via the session
  writer     ``session.messages_to_send`` plus queued best-effort messages → one frame (batching) or several;
             also the link's clock: between wake-ups it sleeps until the session's next deadline (keepalive,
             retransmit), and closes a link whose peer has gone silent

A CloudCore holds one link per edge, 10,000 of them in one process, so a link is built from the lightest parts
that do the job: plain lists and one-waiter wake-ups rather than asyncio Queues and Events (each of which
holds deques of its own), no TaskGroup, and no keepalive task of its own.

A peer that stops reading cannot hold a link open: a frame that does not go out within ``write_timeout`` aborts
the connection, and so does a close that does not complete within twice ``close_timeout`` (websockets drains
what is queued before it sends the close frame, and that never ends when the peer does not read). While a frame
waits to go out, the silent-peer check waits with it; the write timeout bounds that wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import orjson
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from common.logging import get_logger
from common.messages import DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME_BYTES, Message, MessageError, decode, to_dict
from common.protocol.session import Close, CloseCode, Event

log = get_logger(__name__)

INBOUND_QUEUE = 1024  # events waiting for the consumer before the reader stops reading
OUTBOUND_QUEUE = 256  # best-effort messages waiting for the writer before send() waits
CONSUME_BATCH = 512  # events handed to the consumer at once (one SQLite transaction at the edge)
# Batch frames are cut at this size, far below the frame limit, so one frame goes out well within the write
# timeout on a slow link (1 MiB in 15 s is 0.6 Mbit/s); a single larger message still goes out on its own.
MAX_BATCH_BYTES = 1024 * 1024


class Session(Protocol):
    batching: bool
    established: bool

    def receive(self, message: Message, now: float, now_ms: int) -> list[Event]: ...
    def messages_to_send(self, now: float, now_ms: int) -> list[Message]: ...
    def check_timeouts(self, now: float) -> Close | None: ...
    def next_deadline(self) -> float: ...


EventHandler = Callable[[list[Event]], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Wakeup:
    """A flag one task waits on and anything sets: an ``asyncio.Event`` for a single waiter, without the Event's
    deque of waiters (a future exists only while the task waits)."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        if self._flag:
            return
        assert self._waiter is None, "a Wakeup has one waiter"
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class HubLink:
    __slots__ = (
        "_batch_bytes",
        "_close_timeout",
        "_handle",
        "_inbound",
        "_inbound_ready",
        "_inbound_room",
        "_loop",
        "_max_batch",
        "_max_first_frame",
        "_max_frame",
        "_name",
        "_outbound",
        "_outbound_room",
        "_stop",
        "_wake",
        "_write_timeout",
        "bytes_received",
        "bytes_sent",
        "close_code",
        "close_reason",
        "frames_sent",
        "session",
        "ws",
    )

    def __init__(
        self,
        ws: Connection,
        session: Session,
        handle: EventHandler,
        *,
        name: str,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        write_timeout: float = 30.0,
        close_timeout: float = 2.0,
        max_first_frame_bytes: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.ws = ws
        self.session = session
        self._handle = handle
        self._name = name
        self._max_frame = max_frame_bytes
        self._batch_bytes = min(max_frame_bytes, MAX_BATCH_BYTES)
        self._write_timeout = write_timeout
        self._close_timeout = close_timeout
        # The hello is checked for size before it is decoded: decoding a 14 MB inventory costs ~240 MB.
        self._max_first_frame = max_first_frame_bytes
        self._max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        # Lists, not deques: an empty deque is ~600 bytes, an empty list ~60, and these stay short.
        self._inbound: list[Event] = []  # at most INBOUND_QUEUE
        self._inbound_ready = Wakeup()  # the consumer waits for events
        self._inbound_room = Wakeup()  # the reader waits for room
        self._outbound: list[Message] = []  # at most OUTBOUND_QUEUE
        self._outbound_room: asyncio.Event | None = None  # senders wait here, made when first needed
        self._wake = Wakeup()  # the writer waits for something to send
        self._stop = Wakeup()  # run() waits for the end
        self.close_code: int | None = None
        self.close_reason = ""
        self.frames_sent = 0
        self.bytes_sent = 0  # websocket payload, both ways: what a reconnect storm costs on the wire
        self.bytes_received = 0

    def wake(self) -> None:
        """Something may be ready to send (an ack, a newer object): let the writer look."""
        self._wake.set()

    async def send(self, message: Message) -> None:
        """Queue a best-effort message (no seq, no ack); waits while the queue is full."""
        while len(self._outbound) >= OUTBOUND_QUEUE:
            if self._outbound_room is None:
                self._outbound_room = asyncio.Event()  # several senders may wait at once
            self._outbound_room.clear()
            await self._outbound_room.wait()
        self._outbound.append(message)
        self._wake.set()

    async def close(self, code: int, reason: str) -> None:
        """Close with a code and a reason the peer will see (truncated to what a close frame holds)."""
        if self.close_code is None:
            self.close_code, self.close_reason = int(code), reason
        try:
            async with asyncio.timeout(2 * self._close_timeout):
                await self.ws.close(code, reason.encode()[:120].decode(errors="ignore"))
        except TimeoutError:
            log.warning("link_close_timed_out", link=self._name, code=int(code))
            self.ws.transport.abort()
        finally:
            self._stop.set()

    def _abort(self, code: int, reason: str) -> None:
        """End the link at once, without a close handshake: the peer is not reading."""
        if self.close_code is None:
            self.close_code, self.close_reason = int(code), reason
        self.ws.transport.abort()
        self._stop.set()

    async def run(self) -> None:
        """Serve the connection until it closes, from either side or by a timeout."""
        self._wake.set()  # the session may already have something (the hello, the welcome)
        create = self._loop.create_task
        tasks = [
            create(self._read(), name=f"{self._name}.reader"),
            create(self._consume(), name=f"{self._name}.consumer"),
            create(self._write(), name=f"{self._name}.writer"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [e for e in ended if isinstance(e, Exception)]
        if failures:
            raise ExceptionGroup(f"{self._name} failed", failures)
        if self.close_code is None:
            self.close_code = None if self.ws.close_code is None else int(self.ws.close_code)
            self.close_reason = self.ws.close_reason or ""

    async def _read(self) -> None:
        try:
            await self._read_frames()
        except ConnectionClosed:
            pass  # the peer or the network ended it; run() reports the close code
        finally:
            self._stop.set()

    async def _read_frames(self) -> None:
        async for frame in self.ws:
            self.bytes_received += len(frame)
            first = self._max_first_frame
            if first is not None and not self.session.established and len(frame) > first:
                reason = f"hello of {len(frame)} bytes exceeds the limit of {first}"
                log.warning("frame_rejected", link=self._name, reason=reason)
                await self.close(CloseCode.TOO_BIG, reason)
                return
            try:
                messages = decode(frame, max_bytes=self._max_frame, max_batch=self._max_batch)
            except MessageError as exc:
                log.warning("frame_rejected", link=self._name, reason=str(exc))
                await self.close(CloseCode.INVALID_DATA, f"malformed message: {exc}")
                return
            now, wall = self._loop.time(), now_ms()
            for message in messages:
                for event in self.session.receive(message, now, wall):
                    if isinstance(event, Close):
                        log.warning("session_refused", link=self._name, code=int(event.code), reason=event.reason)
                        await self.close(event.code, event.reason)
                        return
                    while len(self._inbound) >= INBOUND_QUEUE:
                        self._inbound_room.clear()
                        await self._inbound_room.wait()
                    self._inbound.append(event)
                    self._inbound_ready.set()
            self._wake.set()

    async def _consume(self) -> None:
        try:
            while True:
                while not self._inbound:
                    self._inbound_ready.clear()
                    await self._inbound_ready.wait()
                batch = self._inbound[:CONSUME_BATCH]
                del self._inbound[:CONSUME_BATCH]
                self._inbound_room.set()
                await self._handle(batch)
                self._wake.set()  # handling produced acks
        except ConnectionClosed:
            pass
        finally:
            self._stop.set()

    async def _write(self) -> None:
        try:
            await self._write_frames()
        except ConnectionClosed:
            pass
        finally:
            self._stop.set()

    async def _write_frames(self) -> None:
        while True:
            if not self._wake.is_set():  # nothing to send: sleep until woken or the session's next deadline
                deadline = max(self.session.next_deadline(), self._loop.time() + 0.01)
                alarm = self._loop.call_at(deadline, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    alarm.cancel()
            self._wake.clear()
            now = self._loop.time()
            timeout = self.session.check_timeouts(now)
            if timeout is not None:
                log.warning("link_timed_out", link=self._name, reason=timeout.reason)
                await self.close(timeout.code, timeout.reason)
                return
            messages = self.session.messages_to_send(now, now_ms())
            if self._outbound:
                messages += self._outbound
                self._outbound = []
                if self._outbound_room is not None:
                    self._outbound_room.set()
            for frame in self._frames(messages):
                try:
                    async with asyncio.timeout(self._write_timeout):
                        await self.ws.send(frame, text=True)
                except TimeoutError:
                    reason = f"a frame of {len(frame)} bytes did not go out within {self._write_timeout:g} s"
                    log.warning("link_write_timed_out", link=self._name, reason=reason)
                    self._abort(CloseCode.TIMEOUT, reason)
                    return
                self.frames_sent += 1
                self.bytes_sent += len(frame)

    def _frames(self, messages: list[Message]) -> Iterator[bytes]:
        if not self.session.batching:
            for message in messages:
                yield orjson.dumps(to_dict(message))
            return
        parts: list[bytes] = []
        size = 2
        for message in messages:
            part = orjson.dumps(to_dict(message))
            if parts and size + len(part) + 1 > self._batch_bytes:
                yield b"[" + b",".join(parts) + b"]"
                parts, size = [], 2
            parts.append(part)
            size += len(part) + 1
        if parts:
            yield b"[" + b",".join(parts) + b"]"
