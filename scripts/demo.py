"""``make demo``: the whole system on one machine, end to end, with short readable progress.

    .venv/bin/python -m scripts.demo [up] [--dir DIR] [--once]    bring it all up, then wait for Ctrl-C
    .venv/bin/python -m scripts.demo down [--dir DIR]              tear down a demo left running

``up`` starts, in order: the control plane (etcd, kube-apiserver, kube-scheduler and kube-controller-manager,
``scripts/control_plane.py``), a private mosquitto and a private containerd (with the locally built busybox and
pause images: there is no registry); ``keadm init`` against the control plane; CloudCore as a local process (the
cluster has no node but the edge, and the Deployment ``keadm init`` applies keeps CloudCore off edge nodes, so it
stays Pending); ``keadm gettoken`` and ``keadm join`` into ``<dir>/edge`` (a root directory, so nothing touches
systemd); EdgeCore; a Deployment the scheduler places on the edge node, its pod on the node's own bridge network
with an address from the node's pod CIDR; a virtual device with ``kubage-mapper``, whose readings reach the
Device status and whose desired value reaches the device; and ``keadm diagnose`` on the edge node. Then it
prints how to look around and waits.

Everything lives in one directory (default ``/tmp/kubage-demo``, or ``$KUBAGE_DEMO_DIR``): the services' logs in
``logs/``, and ``state.json`` with the pid of the demo and of every process it started. Ctrl-C (or SIGTERM, which
is what ``down`` sends the demo) stops everything in reverse order, and moves ``state.json`` to
``logs/processes.json``. If the demo process itself is gone, ``down``
stops the recorded processes itself, each only if ``/proc/PID/exe`` is still the binary that was started.

``--once`` (or ``DEMO_ONCE=1``): no waiting; tear down after the last check and exit 0 only if every step
succeeded. Each step has a timeout; a failed step is named, the end of its log is shown, everything is torn down
and the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from cloudcore.kube import Conflict, Kube
from keadm.paths import EdgeLayout
from scripts.harness import federated
from scripts.harness.cluster import create_namespace
from scripts.harness.containerd import BUSYBOX_IMAGE, Containerd, cni_settings
from scripts.harness.containerd import start as start_containerd
from scripts.harness.learning_image import REF as LEARNING_IMAGE
from scripts.harness.learning_image import build as build_learning_image
from scripts.harness.mosquitto import Mosquitto
from scripts.harness.procs import Process, free_port, http_ok, identity, is_ours, production_env, stop_pid, tail

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: cloudcore, edgecore, keadm, kubage-mapper
DEFAULT_DIR = Path(os.environ.get("KUBAGE_DEMO_DIR", "/tmp/kubage-demo"))
NODE = "demo-edge"
NODE_IP = "10.250.3.254"  # in scripts/control_plane.py's EDGE_NODE_NETWORK, local to this machine
NAMESPACE = "demo"
DEVICES = "/apis/devices.kubeedge.io/v1beta1"
POD = "hello"
DEVICE = "thermometer-1"
READINGS = 4  # distinct temperature readings to see arrive before moving on
# The federated job's other two nodes, each with its own containerd, as one runtime belongs to one node.
MORE_NODES = (("demo-edge-2", "10.250.3.253"), ("demo-edge-3", "10.250.3.252"))
FL_JOB = "digits"
FL_ROUNDS = 15


class StepFailed(Exception):
    """A step did not succeed; the message says why."""


# --- output ----------------------------------------------------------------------------------------------------


class Progress:
    """One line per step (``[ 3/13] containerd ... ok 0.3s``), detail lines indented under it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.open = False  # the current step's line still waits for its verdict

    def detail(self, text: str) -> None:
        if self.open:
            print(flush=True)
            self.open = False
        print(f"        {text}", flush=True)

    @contextlib.asynccontextmanager
    async def step(self, title: str, timeout: float | None, logs: list[Path] | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        """Run the body as step ``title`` within ``timeout`` seconds; failure raises StepFailed with the log tail."""
        self.number += 1
        print(f"[{self.number:>2}/{self.total}] {title} ...", end="", flush=True)
        self.open = True
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError:
            self._verdict("FAILED")
            raise StepFailed(_with_logs(f"{title}: no success within {timeout:g} s", logs)) from None
        except StepFailed as exc:
            self._verdict("FAILED")
            raise StepFailed(_with_logs(f"{title}: {exc}", logs)) from None
        except Exception as exc:  # any other error of the step: named with its type, then teardown
            self._verdict("FAILED")
            raise StepFailed(_with_logs(f"{title}: {type(exc).__name__}: {exc}", logs)) from None
        self._verdict(f"ok {time.monotonic() - started:.1f}s")

    def _verdict(self, text: str) -> None:
        if self.open:
            print(f" {text}", flush=True)
        else:
            print(f"        {text}", flush=True)
        self.open = False


def _with_logs(message: str, logs: list[Path] | None) -> str:
    parts = [message]
    for log in logs or []:
        parts.append(f"--- last lines of {log}:\n{tail(log, 15)}")
    return "\n".join(parts)


# --- processes and state ---------------------------------------------------------------------------------------


class _AdoptedProcess:
    """The few ``subprocess.Popen`` methods tests/containerd.py's teardown calls, for a containerd that a demo
    process which no longer exists started: ``down`` adopts it by pid to run the same thorough teardown
    (containers over CRI, leftover shims, mounts, cgroups)."""

    def __init__(self, pid: int, exe: str) -> None:
        self.pid, self.exe = pid, exe
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not is_ours(self.pid, self.exe):
            self.returncode = 0
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"containerd pid {self.pid}", timeout or 0)
            time.sleep(0.05)
        return self.returncode or 0


@dataclass
class MoreNode:
    """One of the federated job's other edge nodes."""

    name: str
    ip: str
    layout: EdgeLayout
    monitor_port: int = field(default_factory=free_port)
    containerd: Containerd | None = None
    containerd_start: asyncio.Future[Containerd] | None = None


@dataclass
class Demo:
    directory: Path
    progress: Progress = field(default_factory=lambda: Progress(15))
    services: dict[str, Process] = field(default_factory=dict)
    mosquitto: Mosquitto | None = None
    containerd: Containerd | None = None
    containerd_start: asyncio.Future[Containerd] | None = None
    kube: Kube | None = None
    kubeconfig: Path = Path()
    ports: dict[str, int] = field(default_factory=dict)
    token: str = ""
    pod_uid: str = ""
    more: list[MoreNode] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def control_plane(self) -> Path:
        return self.directory / "control-plane"

    @property
    def edge(self) -> EdgeLayout:
        return EdgeLayout(self.directory / "edge")

    @property
    def cloud_dir(self) -> Path:
        return self.directory / "cloudcore"

    # --- state file ------------------------------------------------------------------------------------------

    def save_state(self) -> None:
        """What ``down`` needs when this process is gone: every pid with the binary it runs."""
        processes: dict[str, dict[str, Any]] = {}
        for name, service in self.services.items():
            if service.proc is not None:
                processes[name] = service.identity()
        if self.mosquitto is not None and self.mosquitto.proc is not None:
            processes["mosquitto"] = identity(self.mosquitto.proc.pid)
        state: dict[str, Any] = {
            "demo": identity(os.getpid()),
            "processes": processes,
            "control_plane": str(self.control_plane),
        }
        if self.containerd is not None:
            state["containerd"] = {"root": str(self.containerd.root), **identity(self.containerd.process.pid)}
        state["containerds"] = [
            {"root": str(n.containerd.root), **identity(n.containerd.process.pid)}
            for n in self.more
            if n.containerd is not None
        ]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # --- helpers ---------------------------------------------------------------------------------------------

    async def run_command(self, name: str, argv: list[str], timeout: float = 60.0) -> str:  # noqa: ASYNC109
        """Run a short command to completion; its output goes to ``logs/<name>.log`` and is returned."""
        log = self.logs / f"{name}.log"
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=production_env(),
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{text}\n(exit {proc.returncode})\n")
        if proc.returncode != 0:
            last = "\n".join(text.strip().splitlines()[-8:])
            raise StepFailed(
                f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} exited {proc.returncode}:\n{last}"
            )
        return text

    def start_service(self, name: str, argv: list[str]) -> Process:
        service = Process(argv, self.logs / f"{name}.log", cwd=self.logs, name=name)
        self.services[name] = service
        service.start()
        self.save_state()
        return service

    async def wait_ready(self, service: Process, port: int) -> None:
        """Until ``GET /readyz`` on ``port`` answers 200; fails at once if the service exits."""
        while True:
            code = service.exited()
            if code is not None:
                raise StepFailed(f"{service.name} exited with {code}")
            if await asyncio.to_thread(http_ok, f"http://127.0.0.1:{port}/readyz"):
                return
            await asyncio.sleep(0.2)

    async def until(self, check: Callable[[], Any], interval: float = 0.3) -> Any:
        """Poll ``await check()`` until it returns something truthy; a service that exits fails the step."""
        while True:
            for service in self.services.values():
                code = service.exited()
                if code is not None:
                    raise StepFailed(f"{service.name} exited with {code}")
            result = await check()
            if result:
                return result
            await asyncio.sleep(interval)

    def api(self) -> Kube:
        assert self.kube is not None
        return self.kube

    # --- steps -----------------------------------------------------------------------------------------------

    async def up(self) -> None:
        p = self.progress
        cp_log = self.logs / "control-plane.log"
        async with p.step("control plane: etcd, kube-apiserver, scheduler, controller-manager", 300, [cp_log]):
            out = await self.run_command(
                "control-plane",
                [sys.executable, str(ROOT / "scripts" / "control_plane.py"), "up", "--dir", str(self.control_plane)],
                timeout=290,
            )
            self.kubeconfig = Path(out.strip().splitlines()[-1].removeprefix("export KUBECONFIG="))
            self.kube = await Kube.connect(str(self.kubeconfig))

        async with p.step("mosquitto (MQTT broker)", 15, [self.logs / "mosquitto.log"]):
            self.mosquitto = Mosquitto(self.logs / "mosquitto")
            await asyncio.to_thread(self.mosquitto.start)
            self.save_state()

        async with p.step("containerd + runc, with the local busybox and pause images", 120):
            await self._start_containerd()

        await self.cloud()
        await self.join()
        await self.pod()
        await self.device()
        await self.more_nodes()
        await self.federated()

        async with p.step("keadm diagnose on the edge node", 30):
            out = await self.run_command(
                "keadm-diagnose", [str(BIN / "keadm"), "diagnose", "--root-dir", str(self.edge.root)]
            )
            for line in out.strip().splitlines()[1:-1]:
                p.detail(line)

    async def _start_containerd(self) -> None:
        # containerd starts in a thread (tests/containerd.py is synchronous and bounds its own waits). The future
        # is kept so that teardown, even after a Ctrl-C here, waits for it and stops what it started.
        self.containerd_start = asyncio.ensure_future(asyncio.to_thread(start_containerd))
        self.containerd = await asyncio.shield(self.containerd_start)
        self.save_state()
        self.progress.detail(f"socket {self.containerd.socket}")

    async def cloud(self) -> None:
        p = self.progress
        async with p.step("keadm init (CRDs, RBAC, Deployment, CA Secret)", 90, [self.logs / "keadm-init.log"]):
            out = await self.run_command(
                "keadm-init",
                [
                    str(BIN / "keadm"),
                    "init",
                    "--kube-config",
                    str(self.kubeconfig),
                    "--advertise-address",
                    "127.0.0.1",
                ],
            )
            for line in out.splitlines():
                if "Secret" in line:  # the rest is in logs/keadm-init.log
                    p.detail(line.strip("✓ "))
        await self._cloudcore()

    async def _cloudcore(self) -> None:
        p = self.progress
        self.ports = {
            "websocket": free_port(),
            "https": free_port(),
            "cloud-monitor": free_port(),
            "stream": free_port(),
        }
        config = self.cloud_dir / "cloudcore.yaml"
        cloud_log = self.logs / "cloudcore.log"
        async with p.step("CloudCore", 60, [cloud_log]):
            p.detail("runs as a local process: this control plane has no kubelet to run the Deployment's pod")
            self.cloud_dir.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(self.cloudcore_config()))
            service = self.start_service("cloudcore", [str(BIN / "cloudcore"), "--config", str(config)])
            await self.wait_ready(service, self.ports["cloud-monitor"])
            p.detail(
                f"edges: wss://127.0.0.1:{self.ports['websocket']}, certificates: https://127.0.0.1:{self.ports['https']}"
            )

    def cloudcore_config(self) -> dict[str, Any]:
        # The TLS files do not exist yet: CloudCore loads the CA from the Secret keadm init created, and writes them.
        ca, certs = self.cloud_dir / "ca", self.cloud_dir / "certs"
        # kubectl logs/exec: the API server reaches the edge node at NODE_IP and the stream port (no DNAT here),
        # and verifies the stream server with the control plane's CA, which signed its kubelet certificate.
        pki = self.control_plane / "pki"
        return {
            "kubeAPIConfig": {"kubeConfig": str(self.kubeconfig)},
            "commonConfig": {
                "monitorServer": {"bindAddress": f"127.0.0.1:{self.ports['cloud-monitor']}"},
                "tunnelPort": self.ports["stream"],
            },
            "modules": {
                "cloudStream": {
                    "address": "0.0.0.0",  # noqa: S104 - the edge node's address, NODE_IP, is local too
                    "streamPort": self.ports["stream"],
                    "tlsStreamCAFile": str(pki / "ca.crt"),
                    "tlsStreamCertFile": str(pki / "kubelet-serving.crt"),
                    "tlsStreamPrivateKeyFile": str(pki / "kubelet-serving.key"),
                },
                "cloudHub": {
                    "advertiseAddress": ["127.0.0.1"],
                    "tlsCAFile": str(ca / "rootCA.crt"),
                    "tlsCAKeyFile": str(ca / "rootCA.key"),
                    "tlsCertFile": str(certs / "server.crt"),
                    "tlsPrivateKeyFile": str(certs / "server.key"),
                    "websocket": {"address": "127.0.0.1", "port": self.ports["websocket"]},
                    "https": {"address": "127.0.0.1", "port": self.ports["https"]},
                },
            },
        }

    async def join(self) -> None:
        p = self.progress
        async with p.step(f"keadm gettoken --node {NODE}", 30, [self.logs / "keadm-gettoken.log"]):
            self.token = await self._token(NODE)
            p.detail(f"token {self.token[:24]}... (valid 1 h, for {NODE} only)")
        assert self.containerd is not None
        self.ports["mqtt"] = self.mosquitto.port if self.mosquitto else 0
        self.ports["edge-monitor"] = free_port()
        async with p.step(
            f"keadm join --edgenode-name {NODE} --root-dir {self.edge.root}", 60, [self.logs / "keadm-join.log"]
        ):
            out = await self._keadm_join(
                NODE, NODE_IP, self.token, self.containerd, self.edge, self.ports["edge-monitor"], "keadm-join"
            )
            for line in out.strip().splitlines():
                p.detail(line)
        await self._edgecore()

    async def _token(self, node: str) -> str:
        out = await self.run_command(
            "keadm-gettoken",
            [str(BIN / "keadm"), "gettoken", "--kube-config", str(self.kubeconfig), "--node", node, "--ttl", "1h"],
        )
        return out.strip().splitlines()[-1].strip()

    async def _keadm_join(
        self, node: str, ip: str, token: str, containerd: Containerd, layout: EdgeLayout, monitor: int, log: str
    ) -> str:
        cni = cni_settings(containerd.endpoint, node)
        return await self.run_command(
            log,
            [
                str(BIN / "keadm"),
                "join",
                "--cloudcore-ipport",
                f"127.0.0.1:{self.ports['websocket']}",
                "--certport",
                str(self.ports["https"]),
                "--token",
                token,
                "--edgenode-name",
                node,
                "--remote-runtime-endpoint",
                containerd.endpoint,
                "--root-dir",
                str(layout.root),
                "--set",
                f"modules.eventBus.mqttServerExternal=tcp://127.0.0.1:{self.ports['mqtt']}",
                "--set",
                f"modules.edged.healthzBindAddress=127.0.0.1:{monitor}",
                "--set",
                f"modules.edged.nodeIP={ip}",
                # the pods' bridge network in the demo's containerd (its CNI directory), without NAT
                "--set",
                f"modules.edged.cniConfDir={cni['cniConfDir']}",
                "--set",
                f"modules.edged.bridgeName={cni['bridgeName']}",
                "--set",
                "modules.edged.masquerade=false",
            ],
        )

    async def _edgecore(self) -> None:
        edge_log = self.logs / "edgecore.log"
        async with self.progress.step(f"EdgeCore, node {NODE} Ready in the API server", 90, [edge_log]):
            service = self.start_service("edgecore", [str(BIN / "edgecore"), "--config", str(self.edge.config)])
            await self.wait_ready(service, self.ports["edge-monitor"])
            await self.until(self._node_ready)

    async def _node_ready(self, name: str = NODE) -> bool:
        node = await self.api().get_or_none(f"/api/v1/nodes/{name}")
        if node is None:
            return False
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    async def pod(self) -> None:
        p = self.progress
        async with p.step(f"Deployment {POD}, scheduled onto {NODE}", 120, [self.logs / "edgecore.log"]):
            with contextlib.suppress(Conflict):  # left from an earlier run of the same control plane
                await create_namespace(self.api(), NAMESPACE)
            await self.api().request(
                "POST", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", body=deployment_manifest()
            )
            pod = await self.until(self._pod_running)
            p.detail(f"pod {pod['metadata']['name']} running at the edge, IP {pod['status'].get('podIP')} (own netns)")
            line = await self.until(self._pod_log_line)
            p.detail(f"kubectl -n {NAMESPACE} logs deployment/{POD}: {line}")

    async def _pod_running(self) -> dict[str, Any] | None:
        listed = await self.api().request(
            "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query=[("labelSelector", f"app={POD}")]
        )
        for pod in listed.get("items") or []:
            status = pod.get("status") or {}
            containers = status.get("containerStatuses") or []
            if status.get("phase") == "Running" and containers and "running" in (containers[0].get("state") or {}):
                return cast(dict[str, Any], pod)
        return None

    async def _pod_log_line(self) -> str:
        """The pod's first log line, through the real kubectl: API server → CloudCore → the tunnel → EdgeCore."""
        out = await asyncio.to_thread(
            subprocess.run,
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", NAMESPACE, "logs", f"deployment/{POD}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=production_env(),
        )
        lines = out.stdout.splitlines() if out.returncode == 0 else []
        return lines[0] if lines else ""

    async def device(self) -> None:
        p = self.progress
        objects = f"{DEVICES}/namespaces/{NAMESPACE}"
        mapper_log = self.logs / "mapper.log"
        async with p.step("a virtual thermometer: DeviceModel, Device and kubage-mapper", 30, [mapper_log]):
            await self.api().request("POST", f"{objects}/devicemodels", body=device_model())
            await self.api().request("POST", f"{objects}/devices", body=device_manifest())
            broker = f"tcp://127.0.0.1:{self.ports['mqtt']}"
            self.start_service(
                "mapper", [str(BIN / "kubage-mapper"), "--protocol", "virtual", "--node", NODE, "--broker", broker]
            )
        async with p.step(f"readings arrive in the Device status ({READINGS} of them)", 90, [mapper_log]):
            seen: list[str] = []

            async def new_reading() -> bool:
                value = (await self._reported()).get("temperature")
                if value and (not seen or value != seen[-1]):
                    seen.append(value)
                    p.detail(f"status.twins[temperature].reported.value = {_show(value)}")
                return len(seen) >= READINGS

            await self.until(new_reading, interval=0.25)
        async with p.step("desired fanSpeed 1 -> 3 in the Device spec reaches the device", 60, [mapper_log]):
            await self.until(lambda: self._reported_is("fanSpeed", 1))
            started = time.monotonic()
            await self.api().request(
                "PATCH",
                f"{objects}/devices/{DEVICE}",
                content_type="application/json-patch+json",
                body=[{"op": "replace", "path": "/spec/properties/1/desired/value", "value": "3"}],
            )
            await self.until(lambda: self._reported_is("fanSpeed", 3), interval=0.2)
            p.detail(
                f"the mapper wrote it and reported it back: reported fanSpeed = 3 ({time.monotonic() - started:.1f} s)"
            )

    async def _reported(self) -> dict[str, str]:
        device = await self.api().get(f"{DEVICES}/namespaces/{NAMESPACE}/devices/{DEVICE}")
        twins = (device.get("status") or {}).get("twins") or []
        return {t.get("propertyName", ""): str((t.get("reported") or {}).get("value", "")) for t in twins}

    async def _reported_is(self, name: str, expected: float) -> bool:
        value = (await self._reported()).get(name, "")
        try:
            return float(value) == expected
        except ValueError:
            return False

    async def more_nodes(self) -> None:
        names = " and ".join(name for name, _ in MORE_NODES)
        logs = [self.logs / f"edgecore-{name}.log" for name, _ in MORE_NODES]
        async with self.progress.step(f"two more edge nodes, {names}, each with its own containerd", 180, logs):
            self.more = [MoreNode(name, ip, EdgeLayout(self.directory / name)) for name, ip in MORE_NODES]
            for node in self.more:
                node.containerd_start = asyncio.ensure_future(asyncio.to_thread(start_containerd))
            for node in self.more:
                assert node.containerd_start is not None
                node.containerd = await asyncio.shield(node.containerd_start)
            self.save_state()
            for node in self.more:
                assert node.containerd is not None
                token = await self._token(node.name)
                await self._keadm_join(
                    node.name,
                    node.ip,
                    token,
                    node.containerd,
                    node.layout,
                    node.monitor_port,
                    f"keadm-join-{node.name}",
                )
                service = self.start_service(
                    f"edgecore-{node.name}", [str(BIN / "edgecore"), "--config", str(node.layout.config)]
                )
                await self.wait_ready(service, node.monitor_port)
                name = node.name
                await self.until(lambda: self._node_ready(name))  # noqa: B023 - awaited here
                self.progress.detail(f"{node.name} Ready (InternalIP {node.ip}), containerd {node.containerd.socket}")

    async def federated(self) -> None:
        p = self.progress
        nodes = [NODE, *(n.name for n in self.more)]
        async with p.step(
            f"a FederatedLearningJob over {len(nodes)} edge nodes: FedAvg on digits, the data never leaves its node",
            420,
            [self.logs / "cloudcore.log", self.logs / "edgecore.log"],
        ):
            tar = await asyncio.to_thread(build_learning_image)
            for ctd in [self.containerd, *(n.containerd for n in self.more)]:
                assert ctd is not None
                await asyncio.to_thread(ctd.import_tar, LEARNING_IMAGE, tar, 60)
            p.detail(f"image {LEARNING_IMAGE} (the host's Python, numpy and the lib) imported into each containerd")
            shards, test = federated.write_shards(self.directory / "federated", len(nodes), iid=False)
            base = f"{federated.SEDNA}/namespaces/{NAMESPACE}"
            datasets = []
            for i, (path, node) in enumerate(zip(shards, nodes, strict=True)):
                datasets.append(f"digits-{i}")
                await self.api().request(
                    "POST", f"{base}/datasets", body=federated.dataset(datasets[-1], str(path), node)
                )
            await self.api().request("POST", f"{base}/datasets", body=federated.dataset("digits-test", str(test), NODE))
            model_url = str(self.directory / "federated" / "model" / "digits.kfl")
            await self.api().request("POST", f"{base}/models", body=federated.model("digits", model_url))
            job = federated.job(
                FL_JOB,
                aggregator_node=NODE,
                datasets=datasets,
                model_name="digits",
                eval_dataset="digits-test",
                rounds=FL_ROUNDS,
            )
            await self.api().request("POST", f"{base}/federatedlearningjobs", body=job)
            p.detail(f"{len(nodes)} trainers (2 label-sorted shards of digits each) and the aggregator on {NODE}")
            shown = 0

            async def finished() -> dict[str, Any] | None:
                nonlocal shown
                found = await self.api().get(f"{base}/federatedlearningjobs/{FL_JOB}")
                status = found.get("status") or {}
                for entry in (status.get("roundHistory") or [])[shown:]:
                    p.detail(
                        f"round {entry['round']:>2}: accuracy {entry.get('accuracy', 0):.3f}  "
                        f"({entry['workers']} workers, {entry['seconds']:.2f} s)"
                    )
                    shown = int(entry["round"])
                if status.get("phase") == "Failed":
                    raise StepFailed(f"the federated job failed: {status.get('conditions')}")
                return status if status.get("phase") == "Succeeded" else None

            status = await self.until(finished, interval=0.5)
            p.detail(f"job Succeeded after {status.get('currentRound')} rounds; Model digits saved at {model_url}")

    def summary(self) -> None:
        k = self.kubeconfig
        print(
            f"""
Everything is up. What runs, all on 127.0.0.1:
  kube-apiserver + etcd   {self.control_plane}
  CloudCore               wss :{self.ports.get("websocket")}   certificates https :{self.ports.get("https")}
  EdgeCore ({NODE})    config {self.edge.config}
  EdgeCore (+2 nodes)     {", ".join(str(n.layout.config) for n in self.more) or "-"}
  containerd              {self.containerd.socket if self.containerd else "-"}
  mosquitto               tcp://127.0.0.1:{self.ports.get("mqtt")}
  kubage-mapper           --protocol virtual --node {NODE}

Look around:
  export KUBECONFIG={k}
  kubectl get nodes
  kubectl -n {NAMESPACE} get pods,devices -o wide
  kubectl -n {NAMESPACE} get fl,datasets,models     # the federated job: phase, round, accuracy
  kubectl -n {NAMESPACE} get device {DEVICE} -o jsonpath='{{.status.twins}}'
  kubectl -n {NAMESPACE} logs -f deployment/{POD}   # through the tunnel, like exec and port-forward
  kubectl -n {NAMESPACE} exec -it deployment/{POD} -- sh
  kubectl -n {NAMESPACE} describe pod -l app={POD}  # the edge's events: Pulled, Created, Started
  kubectl get --raw /api/v1/nodes/{NODE}/proxy/stats/summary
  .venv/bin/keadm diagnose --root-dir {self.edge.root}
  logs: {self.logs}/  (cloudcore.log, edgecore.log, mapper.log, ...)
""",
            flush=True,
        )

    # --- teardown --------------------------------------------------------------------------------------------

    async def down(self) -> None:
        """Stop everything this demo started, in reverse order. Never raises."""
        print("stopping ...", end="", flush=True)
        for name in ("mapper", *(f"edgecore-{n}" for n, _ in MORE_NODES), "edgecore", "cloudcore"):
            service = self.services.get(name)
            if service is not None:
                await asyncio.to_thread(service.stop)
        if self.kube is not None:
            with contextlib.suppress(Exception):
                await self.kube.close()
        if self.containerd is None and self.containerd_start is not None:
            with contextlib.suppress(Exception):  # a start still running (Ctrl-C during it): wait, then stop it
                self.containerd = await self.containerd_start
        for node in self.more:
            if node.containerd is None and node.containerd_start is not None:
                with contextlib.suppress(Exception):
                    node.containerd = await node.containerd_start
        for ctd in [self.containerd, *(n.containerd for n in self.more)]:
            if ctd is not None:
                problems = await asyncio.to_thread(ctd.stop)
                for problem in problems:
                    print(f"\n  containerd: {problem}", end="")
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)
        if self.control_plane.exists():
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(ROOT / "scripts" / "control_plane.py"), "down", "--dir", str(self.control_plane)],
                check=False,
                capture_output=True,
            )
        if self.state_file.exists():  # what ran, for a look afterwards (and for the test that checks it all stopped)
            self.state_file.replace(self.logs / "processes.json")
        print(f" done; the logs stay in {self.logs}", flush=True)


# --- manifests -------------------------------------------------------------------------------------------------


def deployment_manifest() -> dict[str, Any]:
    """A Deployment as for any cluster: placed by the scheduler on an edge node, on the pod network."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": POD, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": POD}},
            "template": {
                "metadata": {"labels": {"app": POD}},
                "spec": {
                    "nodeSelector": {"node-role.kubernetes.io/edge": ""},
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": POD,
                            "image": BUSYBOX_IMAGE,  # imported into containerd from a local tar: never pulled
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "sh",
                                "-c",
                                f'echo "hello from busybox on {NODE}, $(uname -sm), at $(hostname -i)"; '
                                "exec sleep 2147483647",
                            ],
                        }
                    ],
                },
            },
        },
    }


def device_model() -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "thermometer", "namespace": NAMESPACE},
        "spec": {
            "protocol": "virtual",
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "fanSpeed", "type": "INT", "accessMode": "ReadWrite"},
            ],
        },
    }


def device_manifest() -> dict[str, Any]:
    def visitor(config: dict[str, Any]) -> dict[str, Any]:
        return {"protocolName": "virtual", "configData": config}

    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": DEVICE, "namespace": NAMESPACE},
        "spec": {
            "deviceModelRef": {"name": "thermometer"},
            "nodeName": NODE,
            "protocol": {"protocolName": "virtual", "configData": {}},
            "properties": [
                {
                    "name": "temperature",
                    "collectCycle": 1000,
                    "reportCycle": 1000,
                    "reportToCloud": True,
                    # a slow sine between 18 and 26: every reading differs from the one before
                    "visitors": visitor({"kind": "sine", "min": 18, "max": 26, "period": 40}),
                },
                {
                    "name": "fanSpeed",
                    "collectCycle": 1000,
                    "reportCycle": 1000,
                    "reportToCloud": True,
                    "desired": {"value": "1"},
                    "visitors": visitor({"kind": "constant", "min": 0, "max": 5}),
                },
            ],
        },
    }


def _show(value: str) -> str:
    try:
        return f"{float(value):.2f} C"
    except ValueError:
        return value


def _running_demo(state: dict[str, Any]) -> int | None:
    """The pid of a demo process that is still running, from a state file."""
    demo = state.get("demo") or {}
    pid, exe = demo.get("pid"), demo.get("exe")
    if not isinstance(pid, int) or not isinstance(exe, str) or pid == os.getpid() or not is_ours(pid, exe):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"scripts.demo" in cmdline else None


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return cast(dict[str, Any], loaded) if isinstance(loaded, dict) else None


def cleanup_leftovers(directory: Path, state: dict[str, Any]) -> None:
    """Stop what a demo process that no longer runs had started: each pid only if it still runs its binary."""
    processes = state.get("processes") or {}
    for name in ("mapper", *(f"edgecore-{n}" for n, _ in MORE_NODES), "edgecore", "cloudcore", "mosquitto"):
        entry = processes.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("pid"), int) and isinstance(entry.get("exe"), str):
            stop_pid(entry["pid"], entry["exe"], str(entry.get("arg") or ""))
    for ctd in [state.get("containerd"), *(state.get("containerds") or [])]:
        if isinstance(ctd, dict) and Path(str(ctd.get("root", ""))).is_dir():
            process = _AdoptedProcess(int(ctd["pid"]), str(ctd["exe"]))
            containerd = Containerd(root=Path(ctd["root"]), process=cast("subprocess.Popen[bytes]", process))
            for problem in containerd.stop():
                print(f"  containerd: {problem}")
    control_plane = Path(str(state.get("control_plane") or directory / "control-plane"))
    if control_plane.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "control_plane.py"), "down", "--dir", str(control_plane)],
            check=False,
        )
    (directory / "state.json").unlink(missing_ok=True)


def down(directory: Path) -> int:
    state = _read_state(directory)
    if state is None:
        print(f"no demo state in {directory}: nothing to stop")
        return 0
    pid = _running_demo(state)
    if pid is not None:
        print(f"asking the demo (pid {pid}) to stop ...", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _running_demo(state) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if _running_demo(state) is None:
            print("stopped")
            return 0
        print(f"the demo (pid {pid}) did not stop within 120 s; stopping its processes directly")
        stop_pid(pid, state["demo"]["exe"], timeout=1)  # it holds nothing the steps below do not stop
    else:
        print("the demo process is gone; stopping what it left running")
    cleanup_leftovers(directory, state)
    print("stopped")
    return 0


async def up(directory: Path, once: bool) -> int:
    demo = Demo(directory)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping = False

    def on_signal() -> None:
        # Ctrl-C, or SIGTERM from `make demo-down` in another terminal: stop. Once stopping, teardown must finish.
        if stopping:
            print("\n(still stopping, please wait)", flush=True)
        else:
            main.cancel()

    # Our own handler for both, instead of asyncio.run's SIGINT handler, so each signal is handled exactly once.
    loop.add_signal_handler(signal.SIGINT, on_signal)
    loop.add_signal_handler(signal.SIGTERM, on_signal)
    started = time.monotonic()
    print(f"kubage demo in {directory}  (logs: {demo.logs}/)", flush=True)
    code = 0
    try:
        await demo.up()
        print(f"\nall {demo.progress.total} steps ok in {time.monotonic() - started:.0f} s", flush=True)
        if not once:
            demo.summary()
            print("Ctrl-C (or `make demo-down` in another terminal) stops everything.", flush=True)
            await asyncio.Event().wait()
    except StepFailed as exc:
        print(f"\nFAILED: {exc}", flush=True)
        code = 1
    except asyncio.CancelledError:
        print(flush=True)
        code = 0 if demo.progress.number >= demo.progress.total else 130
    finally:
        stopping = True
        await demo.down()
    return code


def prepare(directory: Path) -> int | None:
    """A fresh demo directory; None to go on, or the exit code when another demo is still running."""
    state = _read_state(directory)
    if state is not None:
        pid = _running_demo(state)
        if pid is not None:
            print(f"a demo is already running (pid {pid}); `make demo-down` stops it", file=sys.stderr)
            return 1
        print("cleaning up what an earlier demo left running ...", flush=True)
        cleanup_leftovers(directory, state)
    if directory.exists():
        shutil.rmtree(directory)  # logs and the edge's files of an earlier run
    (directory / "logs").mkdir(parents=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="up", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the demo's directory (default {DEFAULT_DIR})")
    parser.add_argument(
        "--once",
        action="store_true",
        default=os.environ.get("DEMO_ONCE", "") not in ("", "0"),
        help="tear down after the last check instead of waiting (also DEMO_ONCE=1); exit 0 only if all succeeded",
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir.absolute()
    if args.command == "down":
        return down(directory)
    refused = prepare(directory)
    if refused is not None:
        return refused
    return asyncio.run(up(directory, bool(args.once)))


if __name__ == "__main__":
    sys.exit(main())
