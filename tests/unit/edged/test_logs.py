"""Container logs from CRI log files: records written as lines (a partial one without its newline), the
kubelet's options, following a rotation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecore.edged.logs import LogError, LogOptions, parse_time, stream_log

RECORDS = (
    b"2026-12-01T10:00:00.000000001Z stdout F first\n"
    b"2026-12-01T10:00:01.5Z stderr P half-\n"
    b"2026-12-01T10:00:01.6Z stderr F way\n"
    b"2026-12-01T10:00:02Z stdout F third\n"
)


async def collect(path: Path, options: LogOptions, running: bool = False) -> bytes:
    async def still() -> bool:
        return running

    return b"".join([chunk async for chunk in stream_log(path, options, running=still)])


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "0.log"
    path.write_bytes(RECORDS)
    return path


async def test_records_become_lines_and_partial_ones_are_joined(log_file: Path, tmp_path: Path) -> None:
    assert await collect(log_file, LogOptions()) == b"first\nhalf-way\nthird\n"
    unended = tmp_path / "1.log"  # `echo -n done`: the line never ends, its output still shows
    unended.write_bytes(b"2026-12-01T10:00:00Z stdout P done\n")
    assert await collect(unended, LogOptions()) == b"done"


async def test_tail_since_timestamps_and_limit_bytes(log_file: Path) -> None:
    assert await collect(log_file, LogOptions(tail_lines=2)) == b"way\nthird\n"  # records, as the kubelet counts
    since = parse_time("2026-12-01T10:00:01.5Z")
    assert await collect(log_file, LogOptions(since_ns=since)) == b"half-way\nthird\n"
    stamped = await collect(log_file, LogOptions(tail_lines=1, timestamps=True))
    assert stamped == b"2026-12-01T10:00:02Z third\n"
    assert await collect(log_file, LogOptions(limit_bytes=8)) == b"first\nha"


def test_query_parameters_as_the_api_server_sends_them() -> None:
    options = LogOptions.from_query(
        {"follow": ["true"], "tailLines": ["5"], "sinceSeconds": ["10"], "timestamps": ["1"]}, now_ns=100 * 10**9
    )
    assert options == LogOptions(follow=True, tail_lines=5, since_ns=90 * 10**9, timestamps=True)
    with pytest.raises(LogError, match="tailLines must be an integer"):
        LogOptions.from_query({"tailLines": ["many"]}, now_ns=0)
    with pytest.raises(LogError, match="sinceTime must be an RFC 3339 time"):
        LogOptions.from_query({"sinceTime": ["yesterday"]}, now_ns=0)


async def test_following_goes_on_across_a_rotation_and_ends_when_the_container_stops(log_file: Path) -> None:
    running = True

    async def still() -> bool:
        return running

    seen: list[bytes] = []

    async def follow() -> None:
        async for chunk in stream_log(log_file, LogOptions(follow=True), running=still):
            seen.append(chunk)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    with log_file.open("ab") as f:
        f.write(b"2026-12-01T10:00:03Z stdout F appended\n")
    await asyncio.sleep(0.1)
    log_file.rename(log_file.with_suffix(".old"))  # rotated: a new file takes the name
    log_file.write_bytes(b"2026-12-01T10:00:04Z stdout F after-rotation\n")
    await asyncio.sleep(0.3)
    running = False
    await asyncio.wait_for(task, 5)  # ends by itself once the container has stopped
    assert b"".join(seen) == b"first\nhalf-way\nthird\nappended\nafter-rotation\n"


async def test_a_missing_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no log file at"):
        await collect(tmp_path / "nope.log", LogOptions())
