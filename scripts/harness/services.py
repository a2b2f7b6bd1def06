"""The real ``cloudcore``, ``edgecore`` and ``kubage-mapper`` commands as subprocesses, as an operator runs them.

Each writes its YAML config into its work dir (``settings()``), logs to a file beside it, and answers
``/readyz`` on its monitor port.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.harness.cluster import next_node_address
from scripts.harness.containerd import cni_settings
from scripts.harness.pki import Pki
from scripts.harness.procs import BIN, Process, free_port, http_ok


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it: nested mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class Service:
    """A command of ours with a config file, a log file and an HTTP /readyz."""

    workdir: Path
    command: str = ""
    monitor_port: int = field(default_factory=free_port)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into settings(), key by key, last
    bin_dir: Path = BIN  # where the command is installed: this venv, or another environment (benchmarks)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / f"{self.command}.yaml"
        self.log = self.workdir / f"{self.command}.log"
        self.config.write_text(yaml.safe_dump(merged(self.settings(), self.extra)))
        self.process = Process(self.argv(), self.log)

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def argv(self) -> list[str]:
        return [str(self.bin_dir / self.command), "--config", str(self.config)]

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    def start(self) -> None:
        self.process.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            code = self.process.exited()
            if code is not None:
                raise AssertionError(f"{self.command} exited with {code}:\n{self.tail()}")
            if await asyncio.to_thread(http_ok, f"http://127.0.0.1:{self.monitor_port}/readyz"):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.command} not ready after {timeout}s:\n{self.tail()}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.monitor_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def samples(self) -> dict[str, float]:
        """The unlabelled samples of /metrics by name; {} when it does not answer."""
        try:
            text = self.metrics()
        except OSError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    found[name] = float(value)
        return found

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> int | None:
        return self.process.stop()

    def tail(self, lines: int = 40) -> str:
        return self.process.tail(lines)


@dataclass
class CloudCoreProcess(Service):
    kubeconfig: Path = Path()
    pki: Pki | None = None  # None: the CA comes from the Secret kubeedge/casecret, as in a real cluster
    command: str = "cloudcore"
    port: int = field(default_factory=free_port)
    cert_port: int = field(default_factory=free_port)  # the certificate service
    keepalive_interval: float = 2.0
    cert_days: float = 365.0  # edgeCertSigningDuration
    node_limit: int = 500
    lease_renew_interval: float = 0.5
    stream_port: int = field(default_factory=free_port)  # also the kubelet port edge nodes advertise

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
        # The control plane's kubelet certificate and CA (scripts/control_plane.py): the API server verifies the
        # stream server with it and presents its kubelet-client certificate, signed by the same CA.
        pki = self.kubeconfig.parent / "pki"
        stream = {
            "address": "0.0.0.0",  # noqa: S104 - every edge node's test address (10.250.3.0/24) leads here
            "streamPort": self.stream_port,
            "advertiseAddress": f"127.0.0.1:{self.stream_port}",
            "tlsStreamCAFile": str(pki / "ca.crt"),
            "tlsStreamCertFile": str(pki / "kubelet-serving.crt"),
            "tlsStreamPrivateKeyFile": str(pki / "kubelet-serving.key"),
        }
        return {
            "kubeAPIConfig": {"kubeConfig": str(self.kubeconfig)},
            "commonConfig": {
                "monitorServer": {"bindAddress": f"127.0.0.1:{self.monitor_port}"},
                "tunnelPort": self.stream_port,  # no DNAT here: the API server dials the stream port itself
            },
            "modules": {
                "cloudHub": {
                    **files,
                    "keepaliveInterval": self.keepalive_interval,
                    "nodeLimit": self.node_limit,
                    "websocket": {"address": "127.0.0.1", "port": self.port},
                    "https": {"address": "127.0.0.1", "port": self.cert_port},
                    "edgeCertSigningDuration": self.cert_days,
                },
                "edgeController": {"leaseRenewInterval": self.lease_renew_interval},
                "cloudStream": stream,
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
    node_ip: str = field(default_factory=next_node_address)  # its own, so the API server's requests name it
    stream_bytes_per_s: float | None = None  # modules.edgeStream.maxBytesPerSecond; None: EdgeCore's default

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
                    "nodeIP": self.node_ip,
                    "remoteRuntimeEndpoint": self.runtime_endpoint,
                    "rootDirectory": str(self.workdir / "edged"),
                    "healthzBindAddress": f"127.0.0.1:{self.monitor_port}",
                    "nodeStatusUpdateFrequency": 2,
                    **(cni_settings(self.runtime_endpoint, self.node) if self.runtime_endpoint else {}),
                },
                "eventBus": {"mqttServerExternal": self.mqtt},
                "localController": {"rootDirectory": str(self.workdir / "sedna")},
                **(
                    {"edgeStream": {"maxBytesPerSecond": self.stream_bytes_per_s}}
                    if self.stream_bytes_per_s is not None
                    else {}
                ),
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

    def argv(self) -> list[str]:
        return [str(BIN / self.command), "--protocol", self.protocol, "--node", self.node, "--broker", self.broker]
