"""A smoke subset of Kubernetes' node conformance suite (`make conformance` runs all of it): the real e2e.test,
built by scripts/build-kube, against a kubage edge node, through scripts/conformance as users run it.

One spec from each of the groups the suite covers; each is the suite's own spec, not ours. The full selection
takes far longer than `make test` may; its pass rate is in the node conformance issue's notes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]

# Distinctive parts of the specs' full names, one per group.
SMOKE = (
    "Containers should use the image defaults if command and args are blank",
    "ConfigMap should be consumable from pods in volume with defaultMode set",
    "EmptyDir volumes should support (non-root,0644,tmpfs)",
    "Projected downwardAPI should provide podname only",
    'Probing container should be restarted with a exec "cat /tmp/health" liveness probe',
    "InitContainer [NodeConformance] should invoke init containers on a RestartNever pod",
    "Security Context When creating a container with runAsUser should run the container with uid 65534",
    "Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart exec hook properly",
    "should report termination message from file when pod succeeds and TerminationMessagePolicy "
    "FallbackToLogsOnError is set",
    "Downward API should provide pod name, namespace and IP address as env vars",
    "Networking Granular Checks: Pods should function for intra-pod communication: http",
)


def test_a_smoke_subset_of_the_node_conformance_suite_passes(tmp_path: Path) -> None:
    focus = "|".join(re.escape(spec) for spec in SMOKE)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.conformance", "--focus", focus, "--procs", "4", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    totals = json.loads(lines[-1])
    assert totals["selected"] >= len(SMOKE), done.stdout[-3000:]  # a name may match a sibling spec too
    assert totals["failed"] == 0 and done.returncode == 0, done.stdout[-4000:]
