"""CriRuntime against a real containerd (tests/containerd.py): images, host-network pods, logs, stop, OOM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgecore.edged.cri import CriRuntime
from edgecore.edged.runtime import (
    CONTAINER_NAME,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    RESTART_COUNT,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntimeError,
    ContainerState,
    ImageError,
    Mount,
    Resources,
    SandboxConfig,
    SandboxState,
)
from scripts.harness.containerd import BUSYBOX_IMAGE, CGROUP_ROOT, Containerd

MiB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture
async def rt(containerd: Containerd) -> AsyncIterator[CriRuntime]:
    runtime = CriRuntime(containerd.endpoint, timeout=20)
    try:
        yield runtime
    finally:
        await runtime.close()


def sandbox_config(tmp_path: Path, name: str) -> SandboxConfig:
    uid = str(uuid.uuid4())
    log_dir = tmp_path / "logs" / f"default_{name}_{uid}"
    log_dir.mkdir(parents=True)
    return SandboxConfig(
        name=name,
        namespace="default",
        uid=uid,
        host_network=True,
        hostname=name,  # must be dropped by CriRuntime: runc refuses it with the host's UTS namespace
        log_directory=str(log_dir),
        cgroup_parent=f"/kubepods/pod{uid}",
        labels={POD_NAME: name, POD_NAMESPACE: "default", POD_UID: uid},
        annotations={"test": "cri"},
    )


def container_config(sandbox: SandboxConfig, name: str, script: str, *, attempt: int = 0) -> ContainerConfig:
    return ContainerConfig(
        name=name,
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", script],
        log_path=f"{name}/{attempt}.log",
        attempt=attempt,
        labels={POD_NAME: sandbox.name, POD_NAMESPACE: "default", POD_UID: sandbox.uid, CONTAINER_NAME: name},
    )


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], within_s: float = 10.0) -> T:
    deadline = time.monotonic() + within_s
    while True:
        value = await probe()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def pod(rt: CriRuntime, config: SandboxConfig) -> AsyncIterator[str]:
    """A running sandbox, stopped and removed (with its containers and cgroup parent) afterwards."""
    sandbox_id = await rt.run_sandbox(config)
    try:
        yield sandbox_id
    finally:
        for container in await rt.list_containers(sandbox_id):
            await rt.remove_container(container.id)
        await rt.stop_sandbox(sandbox_id)
        await rt.remove_sandbox(sandbox_id)
        for controller in CGROUP_ROOT.iterdir():
            with contextlib.suppress(OSError):
                (controller / config.cgroup_parent.lstrip("/")).rmdir()


async def test_version(rt: CriRuntime) -> None:
    assert (await rt.version()).startswith("containerd://1.")


async def test_ensure_image(rt: CriRuntime) -> None:
    await rt.ensure_image(BUSYBOX_IMAGE, "IfNotPresent")
    await rt.ensure_image(BUSYBOX_IMAGE, "Never")
    absent = "localhost/absent:0.1"
    with pytest.raises(ImageError, match=r"^image localhost/absent:0\.1 is not present and imagePullPolicy is Never$"):
        await rt.ensure_image(absent, "Never")
    # No registry is reachable: the pull fails, and says which image.
    with pytest.raises(ImageError, match=r"^PullImage of image localhost/absent:0\.1: "):
        await rt.ensure_image(absent, "IfNotPresent")
    with pytest.raises(ImageError, match="unknown imagePullPolicy"):
        await rt.ensure_image(BUSYBOX_IMAGE, "Sometimes")


async def test_host_network_pod_runs_logs_and_stops(rt: CriRuntime, tmp_path: Path) -> None:
    config = sandbox_config(tmp_path, "web")
    data = tmp_path / "data"
    data.mkdir()
    (data / "msg").write_text("from-the-host\n")
    async with pod(rt, config) as sandbox_id:
        sandboxes = [s for s in await rt.list_sandboxes() if s.labels.get(POD_UID) == config.uid]
        assert [(s.id, s.state) for s in sandboxes] == [(sandbox_id, SandboxState.READY)]
        assert sandboxes[0].created_at_ns > 0

        script = 'echo hello-from-cri; echo "$GREETING"; cat /data/msg; pwd; sleep 30'
        spec = replace(
            container_config(config, "main", script, attempt=2),
            env={"GREETING": "hi-from-env"},
            working_dir="/tmp",
            mounts=[Mount(host_path=str(data), container_path="/data", readonly=True)],
            resources=Resources(cpu_period=100_000, cpu_quota=50_000, cpu_shares=512, memory_limit_bytes=64 * MiB),
        )
        container_id = await rt.create_container(sandbox_id, spec, config)
        created = await rt.container_status(container_id)
        assert created.state is ContainerState.CREATED
        await rt.start_container(container_id)
        info = await eventually(lambda: rt.container_status(container_id), lambda c: c.state is ContainerState.RUNNING)
        assert info.state is ContainerState.RUNNING, info
        assert (info.name, info.sandbox_id, info.attempt, info.image) == ("main", sandbox_id, 2, BUSYBOX_IMAGE)
        assert info.annotations[RESTART_COUNT] == "2"
        assert info.started_at_ns >= info.created_at_ns > 0
        assert info.log_path == str(Path(config.log_directory) / "main" / "2.log")

        # CRI log format: <RFC3339Nano time> <stream> <F|P> <line>
        log = Path(info.log_path)

        async def read_log() -> str:
            return log.read_text() if log.exists() else ""

        text = await eventually(read_log, lambda t: t.count("\n") >= 4)
        lines = [re.fullmatch(r"(\S+) stdout F (.*)", line) for line in text.splitlines()]
        assert all(lines), text
        assert [m.group(2) for m in lines if m] == ["hello-from-cri", "hi-from-env", "from-the-host", "/tmp"]

        # Limits reach the container's cgroups (v1 here), under the pod's cgroup parent.
        cgroup = Path(config.cgroup_parent.lstrip("/")) / container_id
        assert (CGROUP_ROOT / "memory" / cgroup / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
        assert (CGROUP_ROOT / "cpu" / cgroup / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (CGROUP_ROOT / "cpu" / cgroup / "cpu.shares").read_text().strip() == "512"

        listed = [c for c in await rt.list_containers() if c.labels.get(POD_UID) == config.uid]
        assert [(c.id, c.sandbox_id, c.labels[CONTAINER_NAME], c.state) for c in listed] == [
            (container_id, sandbox_id, "main", ContainerState.RUNNING)
        ]
        assert [c.id for c in await rt.list_containers(sandbox_id)] == [container_id]

        # sh is PID 1 of its own PID namespace and ignores SIGTERM: SIGKILL after the 1 s grace period.
        await rt.stop_container(container_id, 1)
        stopped = await rt.container_status(container_id)
        assert stopped.state is ContainerState.EXITED
        assert stopped.exit_code in (137, 143)
        assert stopped.reason == "Error"
        assert stopped.finished_at_ns >= stopped.started_at_ns
        await rt.stop_container(container_id, 1)  # stopping again is harmless

        await rt.remove_container(container_id)
        assert container_id not in {c.id for c in await rt.list_containers()}
        await rt.remove_container(container_id)  # already gone: fine
        with pytest.raises(ContainerRuntimeError, match=f"ContainerStatus of container {container_id}: NOT_FOUND"):
            await rt.container_status(container_id)

    assert config.uid not in {s.labels.get(POD_UID) for s in await rt.list_sandboxes()}
    await rt.stop_sandbox(sandbox_id)  # already removed: fine
    await rt.remove_sandbox(sandbox_id)


async def test_memory_limit_ends_in_oomkilled(rt: CriRuntime, tmp_path: Path) -> None:
    config = sandbox_config(tmp_path, "hog")
    async with pod(rt, config) as sandbox_id:
        spec = replace(
            container_config(config, "hog", "x=a; while true; do x=$x$x; done"),
            resources=Resources(memory_limit_bytes=16 * MiB),
        )
        container_id = await rt.create_container(sandbox_id, spec, config)
        await rt.start_container(container_id)

        def done(c: ContainerInfo) -> bool:
            return c.state is ContainerState.EXITED

        info = await eventually(lambda: rt.container_status(container_id), done, within_s=15)
        assert (info.state, info.exit_code, info.reason) == (ContainerState.EXITED, 137, "OOMKilled"), info
        listed = {c.id: c for c in await rt.list_containers(sandbox_id)}
        assert listed[container_id].reason == "OOMKilled"


async def test_errors_name_the_operation_and_object(rt: CriRuntime, tmp_path: Path) -> None:
    with pytest.raises(ContainerRuntimeError, match="StartContainer container no-such-container: NOT_FOUND"):
        await rt.start_container("no-such-container")
    config = sandbox_config(tmp_path, "bad")
    spec = container_config(config, "c", "true")
    with pytest.raises(ContainerRuntimeError, match=r"^CreateContainer c \(attempt 0\) in pod default/bad"):
        await rt.create_container("no-such-sandbox", spec, config)
    unreachable = CriRuntime(f"unix://{tmp_path}/nothing.sock", timeout=2)
    try:
        with pytest.raises(ContainerRuntimeError, match=r"^Version at unix://.*nothing\.sock: UNAVAILABLE"):
            await unreachable.version()
    finally:
        await unreachable.close()


async def test_listings_ask_a_container_status_again_only_when_its_state_changed(
    rt: CriRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Edged lists every container at every sync: one ContainerStatus per container per listing would cost
    # 100 calls a second on a node starting pods. The calls are counted on their way to the real containerd.
    calls: list[str] = []
    real_call = rt._call

    async def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(rt, "_call", counted)
    config = sandbox_config(tmp_path, "exits")
    async with pod(rt, config) as sandbox_id:
        container_id = await rt.create_container(
            sandbox_id, container_config(config, "main", "sleep 1; exit 3"), config
        )
        await rt.start_container(container_id)

        def mine(listed: list[ContainerInfo]) -> ContainerInfo:
            return next(c for c in listed if c.id == container_id)

        running = mine(await rt.list_containers())
        calls.clear()
        again = mine(await rt.list_containers())
        assert again == running
        assert calls == ["ListContainers"]
        # It exits on its own: the next listing sees the state change and asks for the exit code.
        exited = await eventually(rt.list_containers, lambda listed: mine(listed).state is ContainerState.EXITED)
        assert (mine(exited).exit_code, mine(exited).reason) == (3, "Error")
        assert mine(exited).finished_at_ns >= running.started_at_ns > 0
