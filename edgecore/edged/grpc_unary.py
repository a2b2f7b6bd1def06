"""Unary gRPC calls over HTTP/2, on a unix socket or TCP: all that Edged asks of gRPC.

Every CRI call the kubelet makes to containerd, and every gRPC health probe, is unary: one request message,
one response message, a status in the trailers. That is a few headers and one length-prefixed message each way
on an HTTP/2 stream, so ``UnaryChannel`` speaks it over ``h2`` (a sans-I/O HTTP/2 state machine) on one asyncio
connection, several calls at once on their own streams. grpcio's C core, which did this before, added 8.5 MiB
to the gateway's RSS by its import alone; EdgeCore with 10 pods went from 59.3 to 47.0 MiB without it
(``benchmarks/edge_footprint.py``), for the same CPU per pod started.

What it does not do, because nothing here needs it: streaming calls, compression (none is offered, so a server
may not send any), TLS. A call that fails raises ``RpcError`` with the gRPC status name and details, as grpcio
reports them; a connection that drops fails its calls with UNAVAILABLE, and the next call dials again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

# The status codes, by number (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# A response that carries no grpc-status: its HTTP status says what went wrong (gRPC's http-grpc-status-mapping).
_HTTP_STATUS = {
    400: "INTERNAL",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "UNIMPLEMENTED",
    429: "UNAVAILABLE",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024  # the kubelet's limit for CRI messages (ListContainers can be large)
_READ_SIZE = 256 * 1024


class RpcError(Exception):
    """A call that did not end in OK: ``code`` is the status name (``NOT_FOUND``), ``details`` the server's text."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code
        self.details = details


# --- the wire format, sans I/O -----------------------------------------------------------------------------


def frame_message(payload: bytes) -> bytes:
    """One gRPC message on the wire: not compressed (0), its length (4 bytes, big-endian), the bytes."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def unframe_message(body: bytes) -> bytes:
    """The one message of a unary response body; a body that is not exactly one uncompressed message is an
    RpcError, as gRPC's own clients treat it."""
    if len(body) < 5:
        raise RpcError("INTERNAL", f"the response carries {len(body)} bytes, not a gRPC message")
    if body[0] != 0:
        raise RpcError("INTERNAL", "the response is compressed, and no compression was offered")
    length = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise RpcError("INTERNAL", f"the response body holds {len(body) - 5} bytes for a message of {length}")
    return body[5:]


def timeout_header(seconds: float) -> str:
    """``grpc-timeout``: at most 8 digits and a unit; milliseconds while they fit, rounded up."""
    millis = max(1, math.ceil(seconds * 1000))
    return f"{millis}m" if millis < 10**8 else f"{min(math.ceil(seconds), 10**8 - 1)}S"


def call_status(headers: dict[str, str]) -> tuple[str, str]:
    """(status name, details) from a response's trailers (or its headers, for a trailers-only response)."""
    raw = headers.get("grpc-status")
    if raw is None:
        http = int(headers.get(":status", "0") or 0)
        if http == 200:
            return "UNKNOWN", "the response ended without a grpc-status"
        return _HTTP_STATUS.get(http, "UNKNOWN"), f"HTTP status {http}"
    code = int(raw) if raw.isdigit() else -1
    name = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else "UNKNOWN"
    return name, urllib.parse.unquote(headers.get("grpc-message", ""))


# --- one connection ----------------------------------------------------------------------------------------


@dataclass
class _Stream:
    done: asyncio.Future[None]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)


def _decode(pairs: list[tuple[bytes, bytes]] | None) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in pairs or []}


class _Connection:
    """One HTTP/2 connection: a reader task feeds the peer's bytes to h2 and settles the streams' futures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_message: int) -> None:
        self.reader, self.writer = reader, writer
        self.max_message = max_message
        # The headers sent are this module's own, valid by construction: checking them again cost a fifth of
        # each call's time. What the peer sends is still checked.
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config)
        self.streams: dict[int, _Stream] = {}
        self.lost: RpcError | None = None
        self.changed = asyncio.Event()  # a window opened or a stream closed: a waiting sender looks again
        self.h2.initiate_connection()
        self.flush()
        self.task = asyncio.get_running_loop().create_task(self._read())

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        reason = "the server closed the connection"
        try:
            while data := await self.reader.read(_READ_SIZE):
                for event in self.h2.receive_data(data):
                    self._on(event)
                self.flush()
                if self.lost is not None:
                    return
        except (OSError, h2.exceptions.ProtocolError) as exc:
            reason = f"the connection failed: {exc}"
        self._lose(RpcError("UNAVAILABLE", reason))

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            # Streams below its last_stream_id could still complete; failing them too keeps this simple, and
            # a server sends GOAWAY when it goes away, which those calls would not outlive anyway.
            code = getattr(event.error_code, "name", event.error_code)
            self._lose(RpcError("UNAVAILABLE", f"the server ended the connection (GOAWAY {code})"))
            return
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.changed.set()
            return
        if isinstance(event, h2.events.DataReceived):  # the window is handed back even for a stream left early
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = _decode(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers = _decode(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.body += event.data or b""
            if len(stream.body) > self.max_message + 5:
                size = f"more than {self.max_message} bytes"
                self._end(event.stream_id or 0, RpcError("RESOURCE_EXHAUSTED", f"the response is {size}"))
        elif isinstance(event, h2.events.StreamEnded):
            self._end(event.stream_id or 0, None)
        elif isinstance(event, h2.events.StreamReset):
            self._end(event.stream_id or 0, RpcError("UNAVAILABLE", f"the stream was reset ({event.error_code!r})"))

    def _end(self, stream_id: int, error: RpcError | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if error is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        if stream.done.done():
            pass
        elif error is not None:
            stream.done.set_exception(error)
        else:
            stream.done.set_result(None)
        self.changed.set()

    def _lose(self, error: RpcError) -> None:
        """No more calls on this connection; those in flight fail with the first reason it was lost for."""
        if self.lost is None:
            self.lost = error
        for stream_id in list(self.streams):
            self._end(stream_id, self.lost)
        self.writer.close()

    async def call(self, path: str, authority: str, payload: bytes, deadline_s: float) -> bytes:
        """One call on a new stream; ``deadline_s`` goes to the server in grpc-timeout (the caller enforces it)."""
        while True:  # a new stream waits while the peer's limit of concurrent streams is reached
            if self.lost is not None:
                raise self.lost
            if self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams:
                break
            self.changed.clear()
            await self.changed.wait()
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = _Stream(asyncio.get_running_loop().create_future())
        try:
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", authority),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                ("grpc-timeout", timeout_header(deadline_s)),
                ("user-agent", "kubage-edged"),
            ]
            try:
                self.h2.send_headers(stream_id, headers)
                await self._send(stream_id, frame_message(payload))
            except h2.exceptions.ProtocolError as exc:
                raise RpcError("INTERNAL", f"cannot send the request: {exc}") from None
            self.flush()
            await stream.done
        except BaseException:  # cancelled, or the deadline passed: the peer stops working on it too
            if self.streams.pop(stream_id, None) is not None and self.lost is None:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    self.flush()
            raise
        code, details = call_status(stream.trailers or stream.headers)
        if code != "OK":
            raise RpcError(code, details)
        return unframe_message(bytes(stream.body))

    async def _send(self, stream_id: int, data: bytes) -> None:
        """``data`` and END_STREAM, in the chunks the peer's flow-control windows allow."""
        view = memoryview(data)
        while view:
            if self.lost is not None:
                raise self.lost
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(view))
            if room <= 0:
                self.flush()
                self.changed.clear()
                await self.changed.wait()
                continue
            self.h2.send_data(stream_id, bytes(view[:room]))
            view = view[room:]
        self.h2.end_stream(stream_id)

    async def close(self) -> None:
        if self.lost is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
                self.flush()
        self._lose(RpcError("CANCELLED", "the channel was closed"))
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# --- the channel -------------------------------------------------------------------------------------------


class UnaryChannel:
    """Unary calls to ``target``: ``unix:///run/containerd/containerd.sock``, ``unix:/path`` or ``host:port``.

    Connects on first use (so it belongs to the running loop) and again after the connection is lost."""

    def __init__(self, target: str, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.target = target
        self.max_message = max_message
        if target.startswith("unix:"):
            self._path: str | None = target.removeprefix("unix:").removeprefix("//")
            self._authority = "localhost"
        else:
            self._path = None
            self._authority = target
        self._connection: _Connection | None = None
        self._dialing = asyncio.Lock()  # calls made while dialing share the one connection

    async def __aenter__(self) -> UnaryChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def call(self, path: str, request: bytes, *, deadline_s: float) -> bytes:
        """The response message to ``request`` on method ``path`` (``/runtime.v1.RuntimeService/Version``)."""
        try:
            async with asyncio.timeout(deadline_s):
                connection = await self._connected()
                return await connection.call(path, self._authority, request, deadline_s)
        except TimeoutError:
            raise RpcError("DEADLINE_EXCEEDED", f"no answer within {deadline_s:g}s") from None

    async def _connected(self) -> _Connection:
        async with self._dialing:
            if self._connection is not None and self._connection.lost is None:
                return self._connection
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
            try:
                if self._path is not None:
                    reader, writer = await asyncio.open_unix_connection(self._path)
                else:
                    host, _, port = self.target.rpartition(":")
                    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError as exc:
                raise RpcError("UNAVAILABLE", f"cannot connect to {self.target}: {exc.strerror or exc}") from None
            self._connection = _Connection(reader, writer, self.max_message)
            return self._connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
