"""Processes the harness starts: free ports, the production environment, a command with its log, stop by pid.

Everything is stopped by the pid it was started with, and a recorded pid is only signalled while
``/proc/PID/exe`` is still the binary that was started (and, for our Python commands, whose exe is the shared
interpreter, while the script is still on its command line): a reused pid belongs to someone else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the venv's bin: cloudcore, edgecore, keadm, kubage-mapper
STOP_TIMEOUT_S = 15.0


# Ports this process has handed out. The kernel may offer a port again as soon as the probe socket is
# closed, and a CloudCore once got the same port for its monitor and its CloudHub (a CI failure).
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and one this process has not handed out before."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def production_env() -> dict[str, str]:
    """The environment without asyncio's debug mode, which pytest runs with: the services run as they
    would in production. (Any non-empty PYTHONASYNCIODEBUG turns debug mode on, "0" too.)"""
    return {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- pids ------------------------------------------------------------------------------------------------------


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:  # gone, or a zombie
        return None


def is_ours(pid: int, exe: str, arg: str = "") -> bool:
    """``pid`` still runs ``exe`` (and has ``arg`` on its command line)."""
    if exe_of(pid) != exe:
        return False
    if not arg:
        return True
    try:
        return arg.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def identity(pid: int, arg: str = "") -> dict[str, Any]:
    """What a state file keeps of a process to find it again: Popen returns only after exec, so
    /proc/PID/exe is already its binary (the interpreter, for a Python console script; ``arg`` is the script)."""
    return {"pid": pid, "exe": exe_of(pid) or "", "arg": arg}


def _reap(pid: int) -> bool:
    """Collect the process if it is our child; True once it has exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def stop_pid(pid: int, exe: str, arg: str = "", timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only while the pid is still ours."""
    if not is_ours(pid, exe, arg):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_ours(pid, exe, arg) and time.monotonic() < deadline:
        if _reap(pid):
            return
        time.sleep(0.05)
    if is_ours(pid, exe, arg):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while is_ours(pid, exe, arg) and not _reap(pid):
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop a child: SIGTERM, then SIGKILL after ``timeout``. Its exit code (None if it never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# --- a command in the background -------------------------------------------------------------------------------


class Process:
    """A command run in the background in its own session, its output appended to ``log``.

    Its own session: a Ctrl-C in the terminal reaches only the program that started it, which stops what it
    started in order."""

    def __init__(self, argv: list[str], log: Path, *, cwd: Path | None = None, name: str = "") -> None:
        self.name = name or Path(argv[0]).name
        self.argv = argv
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=production_env(),
                start_new_session=True,
                cwd=self.cwd,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.argv[0]} was not started"
        return self.proc.pid

    def identity(self) -> dict[str, Any]:
        return identity(self.pid, self.argv[0])

    def exited(self) -> int | None:
        """The exit code once it has exited; None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        return stop(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)
