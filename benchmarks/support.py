"""What several benchmarks share: progress on stderr, the control plane as a subprocess, /proc readings, a
plain two-column table."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    """Progress goes to stderr: stdout is the table and, last, the JSON line."""
    print(f"# {text}", file=sys.stderr, flush=True)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# --- the control plane (scripts/control_plane.py) --------------------------------------------------------------


def control_plane_command(command: str, state: Path) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "control_plane.py"), command, "--dir", str(state)]


def kubeconfig_from(stdout: str) -> Path:
    for line in stdout.splitlines():
        if line.startswith("export KUBECONFIG="):
            return Path(line.split("=", 1)[1].strip())
    raise RuntimeError(f"control plane printed no KUBECONFIG:\n{stdout}")


def control_plane_up(state: Path) -> Path:
    """Start it and wait; returns the kubeconfig."""
    out = subprocess.run(control_plane_command("up", state), check=False, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"control plane did not come up:\n{out.stderr[-4000:]}")
    return kubeconfig_from(out.stdout)


def control_plane_down(state: Path) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(control_plane_command("down", state), check=False, timeout=120)


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
