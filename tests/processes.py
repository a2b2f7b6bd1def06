"""Run the real ``cloudcore`` and ``edgecore`` commands as subprocesses, as an operator would."""

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
from typing import Any

import yaml

from tests.tunnel import Pki

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def production_env() -> dict[str, str]:
    """The environment without asyncio's debug mode, which pytest runs with: the services run as they
    would in production. (Any non-empty PYTHONASYNCIODEBUG turns debug mode on, "0" too.)"""
    return {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}


@dataclass
class Service:
    """A command with a config file, a log file and an HTTP /readyz."""

    workdir: Path
    command: str = ""
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / f"{self.command}.yaml"
        self.log = self.workdir / f"{self.command}.log"
        self.config.write_text(yaml.safe_dump(self.settings()))

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / self.command), "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=production_env(),
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n{self.tail()}")
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.command} not ready after {timeout}s:\n{self.tail()}")

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


@dataclass
class CloudCoreProcess(Service):
    kubeconfig: Path = Path()
    pki: Pki | None = None  # None: the CA comes from the Secret kubeedge/casecret, as in a real cluster
    command: str = "cloudcore"
    port: int = field(default_factory=free_port)
    cert_port: int = field(default_factory=free_port)  # the certificate service
    keepalive_interval: float = 2.0
    cert_days: float = 365.0  # edgeCertSigningDuration

    def settings(self) -> dict[str, Any]:
        files: dict[str, Any]
        if self.pki is not None:
            files = {
                "tlsCAFile": str(self.pki.ca_file),
                "tlsCAKeyFile": str(self.pki.ca_key_file),
                "tlsCertFile": str(self.pki.server_cert),
                "tlsPrivateKeyFile": str(self.pki.server_key),
            }
        else:  # as deployed: the CA from the cluster's Secret, a serving certificate issued at start
            files = {
                "tlsCAFile": str(self.workdir / "no-ca-file" / "rootCA.crt"),
                "tlsCertFile": str(self.workdir / "certs" / "server.crt"),
                "tlsPrivateKeyFile": str(self.workdir / "certs" / "server.key"),
                "advertiseAddress": ["127.0.0.1"],
            }
        return {
            "kubeAPIConfig": {"kubeConfig": str(self.kubeconfig)},
            "commonConfig": {"monitorServer": {"bindAddress": f"127.0.0.1:{self.monitor_port}"}},
            "modules": {
                "cloudHub": {
                    **files,
                    "keepaliveInterval": self.keepalive_interval,
                    "websocket": {"address": "127.0.0.1", "port": self.port},
                    "https": {"address": "127.0.0.1", "port": self.cert_port},
                    "edgeCertSigningDuration": self.cert_days,
                },
                "edgeController": {"leaseRenewInterval": 0.5},
            },
        }


@dataclass
class EdgeCoreProcess(Service):
    node: str = "edge-1"
    server: str = ""  # host:port of CloudCore (or of a proxy in front of it)
    runtime_endpoint: str = ""
    pki: Pki | None = None
    command: str = "edgecore"
    heartbeat: float = 2.0
    mqtt: str = "tcp://127.0.0.1:1883"  # the MQTT broker EventBus uses

    def settings(self) -> dict[str, Any]:
        assert self.pki is not None
        cert, key = self.pki.node_files(self.node)
        return {
            "database": {"dataSource": str(self.workdir / "edgecore.db")},
            "modules": {
                "edgeHub": {
                    "heartbeat": self.heartbeat,
                    "tlsCaFile": str(self.pki.ca_file),
                    "tlsCertFile": str(cert),
                    "tlsPrivateKeyFile": str(key),
                    "websocket": {"server": self.server},
                },
                "edged": {
                    "hostnameOverride": self.node,
                    "nodeIP": "127.0.0.1",
                    "remoteRuntimeEndpoint": self.runtime_endpoint,
                    "rootDirectory": str(self.workdir / "edged"),
                    "healthzBindAddress": f"127.0.0.1:{self.monitor_port}",
                    "nodeStatusUpdateFrequency": 2,
                },
                "eventBus": {"mqttServerExternal": self.mqtt},
            },
        }

    def pod_log(self, namespace: str, name: str, uid: str, container: str, attempt: int = 0) -> str:
        path = self.workdir / "edged" / "logs" / "pods" / f"{namespace}_{name}_{uid}" / container / f"{attempt}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class MapperProcess(Service):
    """``kubage-mapper``: no config file, no HTTP; flags only."""

    protocol: str = "virtual"
    node: str = "edge-1"
    broker: str = ""
    command: str = "kubage-mapper"

    def settings(self) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / self.command), "--protocol", self.protocol, "--node", self.node, "--broker", self.broker],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=production_env(),
            )
