"""The Kubeflow Training Operator (v1, built and cached by scripts/build-training-operator) against the
control plane of ``scripts/control_plane.py``: its PyTorchJob CRD installed, the operator run as a process
of ours with the control plane's admin kubeconfig.

Its webhook is off, and this is why. The operator only starts its controllers once its certificate rotator
says the webhook is ready: the rotator writes a serving certificate into the Secret
``kubeflow/training-operator-webhook-cert``, expects it mounted (as a pod's secret volume would be) at the
fixed ``/tmp/k8s-webhook-server/serving-certs``, and injects its CA into the ValidatingWebhookConfiguration
``validator.training-operator.kubeflow.org``. Out of a cluster, the API server would reach the webhook
through a Service with no pod behind it, so that configuration is created with no webhooks in it: the
rotator's checks pass and the API server calls nothing. The webhook only validates PyTorchJob specs, which
the global manager builds itself. The certificate directory is a private bind mount in the operator's own
mount namespace (``unshare``), so no other process on the machine shares it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

from scripts import control_plane as cp
from scripts.harness.cluster import ControlPlane
from scripts.harness.procs import Process, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "kubeflow"
SECRET = "training-operator-webhook-cert"  # noqa: S105 - the name of a Secret, not a password
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
CERT_MOUNT = Path("/tmp/k8s-webhook-server")  # the operator's fixed certificate directory's parent
READY_TIMEOUT_S = 120.0


class OperatorError(RuntimeError):
    pass


def build() -> Path:
    """The cache directory with ``training-operator`` and ``crds/``; built on first use (minutes)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-training-operator")], check=False, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise OperatorError(f"scripts/build-training-operator failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class TrainingOperator:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.workdir = workdir
        self.port = int(json.loads((plane.state_dir / "ports.json").read_text())["apiserver"])
        self.proc: Process | None = None

    def _api(self, method: str, path: str, body: object | None = None) -> tuple[int, dict[str, object]]:
        data = json.dumps(body).encode() if body is not None else None
        status, raw = cp._request(self.plane.state_dir, self.port, method, path, data)
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"raw": raw[:500].decode(errors="replace")}

    def _ensure(self, path: str, body: dict[str, object]) -> None:
        status, answer = self._api("POST", path, body)
        if status not in (200, 201, 409):
            raise OperatorError(f"POST {path}: HTTP {status} {answer}")

    def start(self) -> None:
        cache = build()
        crds = self.workdir / "crds"
        crds.mkdir(parents=True, exist_ok=True)
        (crds / "pytorchjobs.yaml").write_bytes((cache / "crds" / "kubeflow.org_pytorchjobs.yaml").read_bytes())
        cp.apply_crds(self.plane.state_dir, self.port, crds)
        self._ensure("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        self._ensure(
            f"/api/v1/namespaces/{NAMESPACE}/secrets", {"metadata": {"name": SECRET}, "type": "Opaque", "data": {}}
        )
        self._ensure(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            {"metadata": {"name": WEBHOOK_CONFIG}, "webhooks": []},
        )
        certs = self.workdir / "webhook"
        (certs / "serving-certs").mkdir(parents=True, exist_ok=True)
        CERT_MOUNT.mkdir(parents=True, exist_ok=True)  # the mount point; empty for everyone else
        self.probe_port = free_port()
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind "$0" {CERT_MOUNT} && exec "$@"',
            str(certs),
            str(cache / "training-operator"),
            f"--kubeconfig={self.plane.kubeconfig}",
            "--enable-scheme=pytorchjob",
            "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            f"--webhook-server-port={free_port()}",
            "--zap-log-level=info",
        ]
        self.proc = Process(argv, self.workdir / "training-operator.log", name="training-operator")
        self.proc.start()
        try:
            self._mount_certs(certs / "serving-certs")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _mount_certs(self, directory: Path) -> None:
        """What the kubelet would do for the operator's pod: the Secret's certificate as files."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_running()
            status, secret = self._api("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
            data = secret.get("data") if status == 200 else None
            if isinstance(data, dict) and "tls.crt" in data and "tls.key" in data:
                for name in ("tls.crt", "tls.key", "ca.crt"):
                    if name in data:
                        (directory / name).write_bytes(base64.b64decode(str(data[name])))
                return
            time.sleep(0.5)
        raise OperatorError(f"the operator wrote no certificate into {NAMESPACE}/{SECRET}:\n{self.tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_running()
            if http_ok(f"http://127.0.0.1:{self.probe_port}/readyz"):
                return
            time.sleep(0.5)
        raise OperatorError(f"the training operator is not ready after {READY_TIMEOUT_S:g}s:\n{self.tail()}")

    def _check_running(self) -> None:
        if self.proc is not None and self.proc.exited() is not None:
            raise OperatorError(f"the training operator exited with {self.proc.exited()}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
