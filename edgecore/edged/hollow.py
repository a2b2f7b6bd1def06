"""A *hollow* container runtime: sandboxes and containers as records, no processes.

For scale benchmarks with thousands of simulated nodes, and for tests of Edged's decisions. Never used to
run real pods. Containers "run" until stopped, or until ``exit()`` makes one exit with a code.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

from edgecore.edged.runtime import (
    CONTAINER_NAME,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntimeError,
    ContainerState,
    ExecResult,
    ImageError,
    ImageInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxState,
)


class HollowRuntime:
    def __init__(self, images: set[str] | None = None) -> None:
        self.images = images if images is not None else {"localhost/busybox:1.35", "localhost/pause:3.6"}
        self.sandboxes: dict[str, SandboxInfo] = {}
        self.containers: dict[str, ContainerInfo] = {}
        self._ids = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):060d}"

    async def version(self) -> str:
        return "hollow://0.1"

    async def network_ready(self) -> tuple[bool, str]:
        return True, ""  # simulated sandboxes need no network

    async def ensure_image(self, image: str, pull_policy: str) -> ImageInfo:
        if image not in self.images:
            raise ImageError(f"image {image} is not present and cannot be pulled (hollow runtime)")
        return ImageInfo(id=f"hollow://{image}")

    async def run_sandbox(self, config: SandboxConfig) -> str:
        sandbox_id = self._id("s")
        self.sandboxes[sandbox_id] = SandboxInfo(sandbox_id, SandboxState.READY, dict(config.labels), time.time_ns())
        return sandbox_id

    async def stop_sandbox(self, sandbox_id: str) -> None:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is not None:
            self.sandboxes[sandbox_id] = replace(sandbox, state=SandboxState.NOT_READY)
            for container in self.containers.values():
                if container.sandbox_id == sandbox_id and container.state is ContainerState.RUNNING:
                    self.exit(container.id, 137, "Error")

    async def remove_sandbox(self, sandbox_id: str) -> None:
        self.sandboxes.pop(sandbox_id, None)

    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str:
        if sandbox_id not in self.sandboxes:
            raise ContainerRuntimeError(f"create container {config.name}: sandbox {sandbox_id} not found")
        container_id = self._id("c")
        labels = {**config.labels, CONTAINER_NAME: config.name}
        self.containers[container_id] = ContainerInfo(
            container_id,
            sandbox_id,
            config.name,
            ContainerState.CREATED,
            labels,
            attempt=config.attempt,
            image=config.image,
            created_at_ns=time.time_ns(),
        )
        return container_id

    async def start_container(self, container_id: str) -> None:
        info = self._get(container_id)
        self.containers[container_id] = replace(info, state=ContainerState.RUNNING, started_at_ns=time.time_ns())

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        if self._get(container_id).state is ContainerState.RUNNING:
            self.exit(container_id, 143, "Error")

    async def remove_container(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return list(self.sandboxes.values())

    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerInfo]:
        return [c for c in self.containers.values() if sandbox_id is None or c.sandbox_id == sandbox_id]

    async def container_status(self, container_id: str) -> ContainerInfo:
        return self._get(container_id)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult:
        self._get(container_id)
        return ExecResult(b"", b"", 0)  # every command succeeds in a container that does not exist

    async def close(self) -> None:
        return None

    def exit(self, container_id: str, code: int, reason: str = "") -> None:
        """Make a running container exit, as its process would."""
        info = self._get(container_id)
        self.containers[container_id] = replace(
            info,
            state=ContainerState.EXITED,
            exit_code=code,
            reason=reason or ("Completed" if code == 0 else "Error"),
            finished_at_ns=time.time_ns(),
        )

    def _get(self, container_id: str) -> ContainerInfo:
        try:
            return self.containers[container_id]
        except KeyError:
            raise ContainerRuntimeError(f"container {container_id} not found") from None
