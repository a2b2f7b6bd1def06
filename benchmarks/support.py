"""What several benchmarks share beyond the dev harness (``scripts/harness``): progress on stderr, /proc
readings, a plain two-column table, and talking to benchmark child processes over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing.process
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from scripts.harness.services import Service

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def runtime_env() -> Path:
    """The ``bin`` directory of an environment holding what a gateway installs: the project and its runtime
    dependencies from uv.lock, none of the development ones (``uv sync --no-dev``). The footprint is measured
    there: import-linter, a test tool, brings rich, and structlog imports rich whenever it is installed (~4 MiB).
    Built once per uv.lock, under ~/.cache/kubage."""
    key = hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()[:12]
    env = Path.home() / ".cache" / "kubage" / f"runtime-env-{key}"
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env), "UV_PYTHON_DOWNLOADS": "never"},
        check=True,
    )
    return env / "bin"


def log(text: str) -> None:
    """Progress goes to stderr: stdout is the table and, last, the JSON line."""
    print(f"# {text}", file=sys.stderr, flush=True)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# --- /proc ---------------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def runq_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def guarded(
    body: Callable[[], int], *, teardown: Callable[[], None], show_logs: Callable[[], None], started: float
) -> int:
    """A benchmark's ``main``: ``body()``'s exit code; Ctrl-C (or SIGTERM) gives 130 and an exception 1, with the
    services' log tails. ``teardown`` runs in every case, and a second Ctrl-C cannot cut it short."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    failed = True
    try:
        code = body()
    except KeyboardInterrupt:
        failed = False  # no log tails: nothing went wrong
        log("interrupted: stopping everything")
        return 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        return 1
    else:
        failed = False
        return code
    finally:
        if failed:
            show_logs()
        t = time.perf_counter()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            teardown()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log(f"stopped in {time.perf_counter() - t:.1f}s; whole run {time.perf_counter() - started:.1f}s")


def log_tails(services: list[Service | None], lines: int = 20) -> None:
    for service in services:
        if service is not None and service.log.exists():
            log(f"{service.command} log tail ({service.log}):\n{service.tail(lines)}")


def stop_services(services: list[tuple[str, Service | None]], *, quiet: bool = False) -> None:
    """Stop each service, in order; an unexpected exit code is reported with the end of its log."""
    for name, service in services:
        if service is not None:
            code = service.stop()
            if code not in (0, None) and not quiet:
                log(f"{name} exited with {code}; log tail:\n{service.tail(15)}")


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, from /proc/<pid>/status; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- child processes -----------------------------------------------------------------------------------------------


async def recv(conn: Connection) -> Any:
    """Receive from a multiprocessing pipe without blocking the loop (or a thread that would outlive it)."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        while not conn.poll():  # also true at EOF: then recv() raises EOFError
            readable.clear()
            await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())
        # uvloop leaves the fd non-blocking; Connection.send/recv of a message larger than the socket buffer
        # would then fail with EAGAIN half-way.
        os.set_blocking(conn.fileno(), True)
    return conn.recv()


async def recv_within(conn: Connection, seconds: float) -> Any:
    async with asyncio.timeout(seconds):
        return await recv(conn)


def stop_child(process: multiprocessing.process.BaseProcess, conn: Connection | None, timeout: float = 15) -> None:
    """Ask a child to stop over its pipe, then terminate, then kill it; close the pipe."""
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.send(("stop",))
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
    if conn is not None:
        conn.close()


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 with fewer than two points."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0
