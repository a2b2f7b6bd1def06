"""Termination messages: the file a container writes at ``terminationMessagePath`` before it exits, and the end
of its log in its place with ``terminationMessagePolicy: FallbackToLogsOnError``, as the kubelet reads them.

Each container instance gets its own empty file in the pod's directory, mounted at the path the spec names
(``/dev/termination-log`` by default), writable by any user so a container running as non-root can write it.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096  # of the file the kubelet reads
FALLBACK_LINES = 80  # of the log, at most FALLBACK_BYTES
FALLBACK_BYTES = 2048


def file_for(pod_dir: Path, container: str, attempt: int) -> Path:
    return pod_dir / "termination" / f"{container}-{attempt}"


def prepare(pod_dir: Path, container: dict[str, Any], attempt: int) -> tuple[Path, str]:
    """The empty host file for this instance and the path in the container to mount it at."""
    path = file_for(pod_dir, container["name"], attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.chmod(path, 0o666)  # noqa: S103 - the container's user, whoever it is, writes its message here
    return path, str(container.get("terminationMessagePath") or DEFAULT_PATH)


def message(pod_dir: Path, container: dict[str, Any], attempt: int, exit_code: int, log_path: str) -> str:
    """What the instance left: its file, else (FallbackToLogsOnError and a failure) the end of its log."""
    text = ""
    with contextlib.suppress(OSError), file_for(pod_dir, container["name"], attempt).open("rb") as f:
        text = f.read(MAX_BYTES).decode(errors="replace")
    if text or exit_code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return text
    return tail_of_log(Path(log_path)) if log_path else ""


def tail_of_log(path: Path) -> str:
    """The last FALLBACK_LINES lines (at most FALLBACK_BYTES) of a CRI log, as written: a partial record (tag
    ``P``, an unterminated last line) stays without its newline."""
    records: collections.deque[bytes] = collections.deque(maxlen=FALLBACK_LINES + 1)
    with contextlib.suppress(OSError), path.open("rb") as f:
        for raw in f:
            parts = raw.rstrip(b"\n").split(b" ", 3)
            if len(parts) < 3:
                continue
            content = parts[3] if len(parts) == 4 else b""
            if records and not records[-1].endswith(b"\n"):
                records[-1] += content  # the continuation of a partial line
            else:
                records.append(content)
            if parts[2] == b"F":
                records[-1] += b"\n"
    lines = list(records)[-FALLBACK_LINES:]
    return b"".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
