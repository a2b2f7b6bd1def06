"""Streams between CloudCore and EdgeCore (kubectl logs, exec, attach, port-forward, the node proxy): the contract.

Each stream is its own mutual-TLS WebSocket connection from the edge to the CloudCore replica it is connected
to, on CloudHub's port at ``/streams/<id>``, so a busy stream is flow-controlled by TCP on its own connection
and never delays the object sync or the keepalives of the hub session. CloudCore asks for one with a
best-effort ``stream``/``connect`` message on the hub session carrying the id and a one-time token; the edge
dials back with the token in ``TOKEN_HEADER``.

On the stream connection, both ways, binary frames carry bytes; a text frame ``eof`` says the sender has no
more (TCP's half-close, which WebSocket lacks); closing the connection ends the stream both ways. The first
bytes from the cloud are the client's HTTP request head as the API server sent it; the edge answers with a
whole HTTP response (or relays the runtime's), which the cloud passes on unchanged.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from common.messages import Group, Message, new_message
from common.protocol.ratelimit import TokenBucket

PATH_PREFIX = "/streams/"
TOKEN_HEADER = "X-Kubage-Stream-Token"  # noqa: S105 - a header name, not a secret
EOF_FRAME = "eof"
CONNECT = "connect"  # the operation of a stream request
RELAY_CHUNK = 256 * 1024  # fewer, larger frames: the relay's cost is per frame more than per byte

_ID = re.compile(r"[0-9a-f]{32}")


class StreamError(ValueError):
    """A stream request or a stream path that is not the contract's; the message says why."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    id: str  # 32 hex digits, also the last part of the path the edge dials
    token: str  # one-time secret the edge presents when it dials back

    @classmethod
    def new(cls) -> StreamRequest:
        return cls(secrets.token_hex(16), secrets.token_urlsafe(24))

    def message(self, *, now_ms: int) -> Message:
        return new_message(
            source="cloudstream",
            group=Group.STREAM,
            operation=CONNECT,
            content={"id": self.id, "token": self.token},
            now_ms=now_ms,
        )

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.id


def is_stream_request(message: Message) -> bool:
    return message.route.group == Group.STREAM and message.route.operation == CONNECT


def parse_request(message: Message) -> StreamRequest:
    content = message.content
    if not isinstance(content, dict):
        raise StreamError("stream request content must be an object")
    stream_id, token = content.get("id"), content.get("token")
    if not isinstance(stream_id, str) or not _ID.fullmatch(stream_id):
        raise StreamError("stream request id must be 32 hex digits")
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        raise StreamError("stream request token must be a string of 16 to 128 characters")
    return StreamRequest(stream_id, token)


def stream_id_of(path: str) -> str:
    """The id in a dialled-back stream's path; StreamError if the path is not one."""
    stream_id = path.removeprefix(PATH_PREFIX)
    if stream_id == path or not _ID.fullmatch(stream_id):
        raise StreamError(f"{path!r} is not {PATH_PREFIX}<32 hex digits>")
    return stream_id


# --- the stream connection -----------------------------------------------------------------------------------


class Pipe:
    """One stream connection as bytes: ``read`` gives a chunk, or b"" once the peer sent ``eof``."""

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self._eof = False

    async def read(self) -> bytes:
        if self._eof:
            return b""
        frame = await self.ws.recv()
        if isinstance(frame, str):
            if frame != EOF_FRAME:
                raise StreamError(f"unexpected text frame {frame[:20]!r} on a stream")
            self._eof = True
            return b""
        return frame

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)  # waits while the peer is slow: TCP's flow control reaches the writer

    async def write_eof(self) -> None:
        await self.ws.send(EOF_FRAME)

    async def close(self) -> None:
        await self.ws.close()


async def relay(
    pipe: Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, bytes_per_s: float = 0
) -> int:
    """Bytes both ways between a stream and a TCP connection, half-closes passed on, until both directions have
    ended (or either side is gone: then both end). Returns the bytes passed from the TCP side to the stream.

    ``bytes_per_s`` (0: none) paces each direction: a bulk copy must leave CPU and bandwidth to the object sync
    beside it on a small gateway."""
    sent = 0
    loop = asyncio.get_running_loop()

    def budget() -> TokenBucket | None:
        return TokenBucket(rate=bytes_per_s, burst=RELAY_CHUNK * 4, now=loop.time()) if bytes_per_s > 0 else None

    async def paced(bucket: TokenBucket | None, size: int) -> None:
        if bucket is not None and (delay := bucket.reserve(loop.time(), size)) > 0:
            await asyncio.sleep(delay)

    async def up() -> None:  # TCP → stream
        nonlocal sent
        bucket = budget()
        while chunk := await reader.read(RELAY_CHUNK):
            await paced(bucket, len(chunk))
            await pipe.write(chunk)
            sent += len(chunk)
        await pipe.write_eof()

    async def down() -> None:  # stream → TCP
        bucket = budget()
        while chunk := await pipe.read():
            await paced(bucket, len(chunk))
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS has no half-close: the other side is done, so the connection is
            writer.close()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(up(), name="stream.up")
            group.create_task(down(), name="stream.down")
    except* (ConnectionClosed, ConnectionError, OSError):
        pass  # one side went away: the stream is over for both
    finally:
        writer.close()
    return sent


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways between two TCP connections (a request passed on to another replica), half-closes
    passed on, until both directions have ended or either side is gone."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS has no half-close: the other side is done, so the connection is
            writer.close()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(pump(a_reader, b_writer), name="splice.ab")
            group.create_task(pump(b_reader, a_writer), name="splice.ba")
    except* (ConnectionError, OSError):
        pass
    finally:
        b_writer.close()
