"""``make demo`` end to end, as CI can run it: ``scripts.demo --once`` brings up everything (its own control
plane, mosquitto, containerd, keadm init/gettoken/join, cloudcore, edgecore, a pod, a virtual device), checks
each step, tears it all down and exits 0 only if every step succeeded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.demo import FL_ROUNDS
from scripts.harness.procs import is_ours, production_env

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parent.parent.parent


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that name any of ``needles`` (the demo's dirs, sockets and configs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if any(n in cmdline for n in needles):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_the_demo_runs_every_step_and_leaves_nothing_running(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--once", "--dir", str(demo_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=production_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "running at the edge, IP 10.244." in out.stdout  # placed by the scheduler, on the node's pod network
    assert "kubectl -n demo logs deployment/hello: hello from busybox on demo-edge" in out.stdout  # the tunnel
    assert "reported fanSpeed = 3" in out.stdout  # the desired value reached the device
    assert f"round {FL_ROUNDS}: accuracy" in out.stdout  # the federated job, round by round
    assert "job Succeeded after" in out.stdout
    assert "all 15 steps ok" in out.stdout
    # Every process it recorded has stopped, and nothing naming this run's demo dir or containerd root is left.
    recorded = json.loads((demo_dir / "logs" / "processes.json").read_text())
    containerds = [recorded["containerd"], *recorded["containerds"]]
    started = [*containerds, *recorded["processes"].values()]
    assert {"cloudcore", "edgecore", "mapper", "mosquitto"} <= set(recorded["processes"])
    assert [p for p in started if is_ours(p["pid"], p["exe"], p.get("arg", ""))] == []
    roots = re.findall(r"(/tmp/kubage-containerd-\w+)", out.stdout)
    assert set(roots) == {c["root"] for c in containerds}, out.stdout
    assert processes_mentioning(str(demo_dir), *roots) == []
