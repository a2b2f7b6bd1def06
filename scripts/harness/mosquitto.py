"""A private mosquitto (the Debian package) on a free loopback port, for tests that need a real MQTT broker.

The config lives in a temp dir and names no pid_file: mosquitto drops root to its own user before writing
one and then cannot (see reference/env.md §5). We track the process ourselves and stop exactly it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.harness.procs import free_port, stop, tail

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class MosquittoError(RuntimeError):
    pass


@dataclass
class Mosquitto:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        if not Path(MOSQUITTO).exists():
            raise MosquittoError(f"{MOSQUITTO} not found: apt-get install mosquitto")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # mosquitto's default queue of 1,000 QoS 1 messages per client would silently drop a burst to a
            # subscriber (a benchmark's, a busy edge's); keep it bounded but out of the way.
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MosquittoError(f"mosquitto exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise MosquittoError(f"mosquitto did not listen on {self.url} within {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop(proc, timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port: every client is cut off and must reconnect."""
        self.stop()
        self.start()

    def tail(self, lines: int = 20) -> str:
        return tail(self.log, lines)
