"""Container logs from the CRI log files, as ``kubectl logs`` shows them.

The runtime writes one record per line: ``<RFC 3339 time> <stdout|stderr> <P|F> <content>``, where ``P`` marks a
part of a longer line that the next record continues and ``F`` its last part. Records are joined back into
lines; the kubelet's options apply (``tailLines``, ``sinceTime``/``sinceSeconds``, ``timestamps``,
``limitBytes``; ``previous`` is the file of the attempt before). Following polls the file for growth, starts
again from the top when it is replaced or truncated (rotation), and ends once the container has stopped and
everything it wrote has been sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Following polls the file: soon again after it grew, backing off to the slow interval while it is quiet, so a
# chatty container's lines arrive within milliseconds and a quiet one costs a stat a tenth of a second.
FOLLOW_POLL_FAST_S = 0.005
FOLLOW_POLL_SLOW_S = 0.1
RUNNING_CHECK_S = 1.0  # how often a quiet follow asks the runtime whether the container still runs
CHUNK = 64 * 1024


class LogError(ValueError):
    """The options or the file do not allow a log to be read; the message says why."""


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    since_ns: int | None = None  # only lines written at or after this time (ns since the epoch)
    timestamps: bool = False
    limit_bytes: int | None = None

    @classmethod
    def from_query(cls, query: dict[str, list[str]], *, now_ns: int) -> LogOptions:
        """The kubelet's query parameters (``follow``, ``tailLines``, ``sinceSeconds``, ``sinceTime``, …)."""

        def one(name: str) -> str:
            values = query.get(name) or [""]
            return values[0]

        def number(name: str) -> int | None:
            text = one(name)
            if not text:
                return None
            try:
                value = int(text)
            except ValueError:
                raise LogError(f"{name} must be an integer, got {text!r}") from None
            if value < 0:
                raise LogError(f"{name} must not be negative, got {value}")
            return value

        since_ns = None
        if seconds := number("sinceSeconds"):
            since_ns = now_ns - seconds * 1_000_000_000
        elif text := one("sinceTime"):
            since_ns = parse_time(text)
            if since_ns is None:
                raise LogError(f"sinceTime must be an RFC 3339 time, got {text!r}")
        return cls(
            follow=one("follow") in ("true", "1"),
            tail_lines=number("tailLines"),
            since_ns=since_ns,
            timestamps=one("timestamps") in ("true", "1"),
            limit_bytes=number("limitBytes"),
        )


@dataclass(frozen=True)
class LogLine:
    time_ns: int
    time_text: str
    stream: str
    content: bytes  # without the newline
    full: bool = True  # a ``P`` record is part of a line, written without a newline, as the kubelet does

    def render(self, timestamps: bool) -> bytes:
        line = self.content + (b"\n" if self.full else b"")
        return self.time_text.encode() + b" " + line if timestamps else line


def parse_time(text: str) -> int | None:
    """ns since the epoch of an RFC 3339 time with up to nanoseconds; None if it is not one."""
    try:
        if "." in text:
            base, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            zone = rest[len(digits) :]
            whole = dt.datetime.fromisoformat(base + (zone if zone != "Z" else "+00:00"))
            return int(whole.timestamp()) * 1_000_000_000 + int(digits.ljust(9, "0")[:9])
        whole = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return int(whole.timestamp()) * 1_000_000_000
    except ValueError:
        return None


class LineAssembler:
    """CRI records in, log records out, one each: a partial record (``P``, a long line split, or output with no
    newline yet) goes out as it is, without a newline, so output that never ends its line is still shown."""

    def __init__(self) -> None:
        self._rest = b""

    def reset(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[LogLine]:
        """Records completed by ``data`` (raw bytes of the file; a record cut off at the end waits for more)."""
        data = self._rest + data
        *records, self._rest = data.split(b"\n")
        out = []
        for record in records:
            line = self._record(record)
            if line is not None:
                out.append(line)
        return out

    @staticmethod
    def _record(record: bytes) -> LogLine | None:
        parts = record.split(b" ", 3)
        if len(parts) < 3:
            return None  # not a CRI record: skip it rather than fail the whole log
        time_text, stream, tag = parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), parts[2]
        time_ns = parse_time(time_text)
        if time_ns is None:
            return None
        return LogLine(time_ns, time_text, stream, parts[3] if len(parts) == 4 else b"", full=tag != b"P")


def read_lines(path: Path) -> Iterator[LogLine]:
    """Every record in the file, in order."""
    assembler = LineAssembler()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield from assembler.feed(chunk)


async def stream_log(
    path: Path,
    options: LogOptions,
    *,
    running: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """The log as ``kubectl logs`` prints it, in chunks; with ``follow``, until the container has stopped."""
    log = _Budget(options)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise LogError(f"no log file at {path}") from None
    try:
        assembler = LineAssembler()
        tail: deque[LogLine] | None = deque(maxlen=options.tail_lines) if options.tail_lines is not None else None
        while chunk := f.read(CHUNK):  # what is there now (tailLines counts from its end)
            lines = log.wanted(assembler.feed(chunk))
            if tail is not None:
                tail.extend(lines)
            elif out := log.take(lines):
                yield out
            if log.spent:
                return
        if tail is not None and (out := log.take(list(tail))):
            yield out
        if options.follow and not log.spent:
            async for out in _follow(path, f, assembler, log, running):
                yield out
    finally:
        f.close()


async def _follow(
    path: Path, f: BinaryIO, assembler: LineAssembler, log: _Budget, running: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """What is appended, until the container has stopped and the file holds nothing more."""
    current, stopped, wait = f, False, FOLLOW_POLL_FAST_S
    checked = 0.0  # when the container's state was last asked of the runtime
    loop = asyncio.get_running_loop()
    try:
        while True:
            chunk = current.read(CHUNK)
            if chunk:
                stopped, wait = False, FOLLOW_POLL_FAST_S
                if out := log.take(log.wanted(assembler.feed(chunk))):
                    yield out
                if log.spent:
                    return
            elif stopped:
                return  # it had stopped before this last empty read: nothing more will come
            elif _replaced(path, os.fstat(current.fileno()).st_ino, current.tell()):
                if current is not f:
                    current.close()
                current = path.open("rb")
                assembler.reset()
            else:
                if loop.time() - checked >= RUNNING_CHECK_S:
                    checked = loop.time()
                    stopped = not await running()
                if not stopped:
                    await asyncio.sleep(wait)
                    wait = min(FOLLOW_POLL_SLOW_S, wait * 2)
    finally:
        if current is not f:
            current.close()


class _Budget:
    """``sinceTime`` and ``limitBytes`` applied to lines as they come."""

    def __init__(self, options: LogOptions) -> None:
        self._options = options
        self._left = options.limit_bytes

    @property
    def spent(self) -> bool:
        return self._left == 0

    def wanted(self, lines: list[LogLine]) -> list[LogLine]:
        since = self._options.since_ns
        return lines if since is None else [line for line in lines if line.time_ns >= since]

    def take(self, lines: list[LogLine]) -> bytes:
        out = b"".join(line.render(self._options.timestamps) for line in lines)
        if self._left is not None:
            out = out[: self._left]
            self._left -= len(out)
        return out


def _replaced(path: Path, identity: int, position: int) -> bool:
    try:
        now = path.stat()
    except OSError:
        return False  # gone for a moment during rotation: keep what is open
    return now.st_ino != identity or now.st_size < position
