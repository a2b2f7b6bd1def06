"""The container runtime as Edged sees it: pod sandboxes and containers, in the CRI's terms.

Two implementations: ``edgecore.edged.cri.CriRuntime`` talks CRI (gRPC) to containerd; the *hollow*
runtime in ``edgecore.edged.hollow`` simulates containers without processes, for scale benchmarks only.
``StreamingRuntime`` is what exec, attach, port-forward and the stats endpoints need on top; only the CRI
runtime has it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from edgecore.edged.security import ContainerSecurity, SandboxSecurity

# Labels every sandbox and container carries, as the kubelet sets them: how Edged finds its own after a
# restart (adoption) without any state of its own outside SQLite.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
# Ours: the node whose Edged made the sandbox. Edged adopts and removes only its own node's sandboxes, never a
# pod another node (or another kubelet) runs in the same containerd.
NODE_NAME = "io.kubage.node"
# Annotation with the restart count of a container instance.
RESTART_COUNT = "io.kubernetes.container.restartCount"


class ContainerRuntimeError(Exception):
    """The runtime refused or failed an operation; the message names the operation and the object."""


class ImageError(ContainerRuntimeError):
    """The image is not present and may not (or cannot) be pulled."""


class SandboxState(enum.Enum):
    READY = "ready"
    NOT_READY = "not_ready"


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    readonly: bool = False


@dataclass(frozen=True)
class Resources:
    cpu_quota: int = 0  # microseconds per cpu_period; 0 = unlimited
    cpu_period: int = 0
    cpu_shares: int = 0
    memory_limit_bytes: int = 0  # 0 = unlimited


@dataclass(frozen=True)
class PortMapping:
    """A container port published on the node (``hostPort``), by the CNI portmap plugin."""

    container_port: int
    host_port: int
    protocol: str = "TCP"  # TCP, UDP or SCTP
    host_ip: str = ""


@dataclass(frozen=True)
class DnsConfig:
    """What the runtime writes into the sandbox's /etc/resolv.conf."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxConfig:
    name: str  # pod name
    namespace: str
    uid: str
    attempt: int = 0
    hostname: str = ""  # must stay empty for host-network pods (runc refuses without a private UTS namespace)
    host_network: bool = False
    log_directory: str = ""  # container logs go to <log_directory>/<container log_path>
    cgroup_parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DnsConfig | None = None
    security: SandboxSecurity = field(default_factory=SandboxSecurity)


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    mounts: list[Mount] = field(default_factory=list)
    log_path: str = ""  # relative to the sandbox's log_directory
    attempt: int = 0
    resources: Resources = field(default_factory=Resources)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    stdin: bool = False  # the spec's stdin, stdinOnce and tty: kubectl attach and debug sessions need them
    stdin_once: bool = False
    tty: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """An image present on the node: its id (``imageID`` in the status) and the user its config names."""

    id: str
    uid: int | None = None  # a numeric USER
    username: str = ""  # a USER by name


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    state: SandboxState
    labels: dict[str, str]
    created_at_ns: int = 0
    ip: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    sandbox_id: str
    name: str  # the container's name in the pod spec (from its metadata)
    state: ContainerState
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    attempt: int = 0
    image: str = ""
    created_at_ns: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""  # e.g. "Completed", "Error", "OOMKilled"
    message: str = ""
    log_path: str = ""  # absolute path of the CRI log file
    image_id: str = ""  # the image's digest (CRI image_ref): imageID in the status


class ContainerRuntime(Protocol):
    async def version(self) -> str: ...

    async def network_ready(self) -> tuple[bool, str]:
        """Whether pods outside the host network can get a network (the runtime's NetworkReady), and why not."""

    async def ensure_image(self, image: str, pull_policy: str) -> ImageInfo:
        """Make ``image`` available under ``pull_policy`` (Always, IfNotPresent, Never); ImageError if not."""

    async def run_sandbox(self, config: SandboxConfig) -> str: ...
    async def stop_sandbox(self, sandbox_id: str) -> None: ...
    async def remove_sandbox(self, sandbox_id: str) -> None: ...
    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, timeout_s: int) -> None: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def list_sandboxes(self) -> list[SandboxInfo]: ...
    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerInfo]: ...
    async def container_status(self, container_id: str) -> ContainerInfo: ...
    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult:
        """Run ``cmd`` in the container and wait (exec probes and hooks)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(frozen=True)
class ContainerUsage:
    """One container's resource use, as the CRI reports it (ListContainerStats)."""

    container_id: str
    name: str
    labels: dict[str, str]
    timestamp_ns: int
    cpu_core_ns: int  # cumulative CPU time
    memory_working_set: int  # bytes
    memory_usage: int
    memory_rss: int


class StreamingRuntime(Protocol):
    """The runtime's streaming server and stats: each streaming call returns the URL to relay the client to."""

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str: ...
    async def attach_url(self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str: ...
    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str: ...
    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult: ...
    async def container_usage(self) -> list[ContainerUsage]: ...
    async def list_sandboxes(self) -> list[SandboxInfo]: ...
    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerInfo]: ...
    async def container_status(self, container_id: str) -> ContainerInfo: ...


class FullRuntime(ContainerRuntime, StreamingRuntime, Protocol):
    """What EdgeCore runs with: pods, and streams to them (``CriRuntime``)."""
