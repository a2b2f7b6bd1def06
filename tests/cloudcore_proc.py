"""Run the real ``cloudcore`` command as a subprocess against the test control plane."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.tunnel import Pki

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class CloudCoreProcess:
    workdir: Path
    kubeconfig: Path
    pki: Pki
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    keepalive_interval: float = 2.0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "cloudcore.yaml"
        self.log = self.workdir / "cloudcore.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "kubeAPIConfig": {"kubeConfig": str(self.kubeconfig)},
                    "commonConfig": {"monitorServer": {"bindAddress": f"127.0.0.1:{self.monitor_port}"}},
                    "modules": {
                        "cloudHub": {
                            "tlsCAFile": str(self.pki.ca_file),
                            "tlsCertFile": str(self.pki.server_cert),
                            "tlsPrivateKeyFile": str(self.pki.server_key),
                            "keepaliveInterval": self.keepalive_interval,
                            "websocket": {"address": "127.0.0.1", "port": self.port},
                        },
                        "edgeController": {"leaseRenewInterval": 0.5},
                    },
                }
            )
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "cloudcore"), "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONASYNCIODEBUG": "0"},
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"cloudcore exited with {self.proc.returncode}:\n{self.tail()}")
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"cloudcore not ready after {timeout}s:\n{self.tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
