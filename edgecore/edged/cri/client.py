"""``CriRuntime``: the ``ContainerRuntime`` Protocol over CRI ``runtime.v1`` gRPC, as the kubelet speaks it.

One HTTP/2 connection to the runtime's unix socket (``unix:///run/containerd/containerd.sock``, through
``edgecore.edged.grpc_unary``), opened on first use so that it belongs to the running event loop, and again
after the runtime restarts. Every gRPC failure becomes a ``ContainerRuntimeError``
(``ImageError`` for images) whose message names the CRI operation, the object and the gRPC status.

What the machine needs (see the environment notes): containerd with ``restrict_oom_score_adj = true`` when
root lacks CAP_SYS_RESOURCE; host-network sandboxes keep an empty hostname; images are looked up with
ImageStatus before any pull, since a pull always goes to the registry.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from edgecore.edged.cri import api_pb2 as pb
from edgecore.edged.grpc_unary import RpcError, UnaryChannel
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
    ContainerUsage,
    ExecResult,
    ImageError,
    ImageInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxState,
)

_R = TypeVar("_R", bound=Message)

PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_PROTOCOLS = {"TCP": pb.TCP, "UDP": pb.UDP, "SCTP": pb.SCTP}

_CONTAINER_STATES = {
    pb.CONTAINER_CREATED: ContainerState.CREATED,
    pb.CONTAINER_RUNNING: ContainerState.RUNNING,
    pb.CONTAINER_EXITED: ContainerState.EXITED,
    pb.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}


class _NotFoundError(ContainerRuntimeError):
    """The runtime answered NOT_FOUND: callers for which that means "already gone" catch it."""


class CriRuntime:
    """A CRI runtime (containerd) reached over gRPC at ``endpoint``; ``timeout`` bounds every call."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0) -> None:
        if "://" not in endpoint:
            endpoint = f"unix://{endpoint}"  # a bare socket path, as crictl accepts it
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = UnaryChannel(endpoint)  # with the kubelet's 16 MiB limit for CRI messages
        # What the listings would otherwise ask again on every sync, one call per pod: a container's
        # ContainerStatus does not change while its state holds (a restart is a new container), nor does a
        # ready sandbox's IP. Edged lists at every sync (on each change, and every syncFrequency): with 50
        # pods on the node that was 100 calls per listing, while the runtime was busy starting the next pods.
        self._statuses: dict[str, ContainerInfo] = {}  # container id → its last ContainerStatus
        self._sandbox_ips: dict[str, str] = {}  # ready sandbox id → its IP (none kept for host network)

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        request: Message,
        response_type: type[_R],
        what: str,
        *,
        deadline_s: float | None = None,
        error: type[ContainerRuntimeError] = ContainerRuntimeError,
    ) -> _R:
        """One unary CRI call, ``method`` on RuntimeService or (if an image method) ImageService."""
        service = "ImageService" if method in ("ImageStatus", "PullImage") else "RuntimeService"
        try:
            data = await self._channel.call(
                f"/runtime.v1.{service}/{method}", request.SerializeToString(), deadline_s=deadline_s or self.timeout
            )
        except RpcError as exc:
            message = f"{method} {what}: {exc.code}: {exc.details}".rstrip(": ")
            if exc.code == "NOT_FOUND" and error is ContainerRuntimeError:
                raise _NotFoundError(message) from None
            raise error(message) from None
        try:
            return response_type.FromString(data)
        except DecodeError as exc:
            raise error(f"{method} {what}: the runtime's answer is not a {response_type.__name__}: {exc}") from None

    async def close(self) -> None:
        await self._channel.close()

    # --- runtime and images --------------------------------------------------------------------------------

    async def version(self) -> str:
        """``<runtime_name>://<runtime_version>``, e.g. ``containerd://1.6.20~ds1``."""
        resp = await self._call("Version", pb.VersionRequest(version="v1"), pb.VersionResponse, f"at {self.endpoint}")
        return f"{resp.runtime_name}://{resp.runtime_version}"

    async def network_ready(self) -> tuple[bool, str]:
        resp = await self._call("Status", pb.StatusRequest(), pb.StatusResponse, f"of {self.endpoint}")
        for condition in resp.status.conditions:
            if condition.type == "NetworkReady":
                return condition.status, f"{condition.reason}: {condition.message}".strip(": ")
        return False, "the runtime reports no NetworkReady condition"

    async def ensure_image(self, image: str, pull_policy: str) -> ImageInfo:
        """IfNotPresent/Never look the image up first (ImageStatus); Always and absent images pull it."""
        if pull_policy not in PULL_POLICIES:
            raise ImageError(f"image {image}: unknown imagePullPolicy {pull_policy!r}")
        if pull_policy != "Always":
            present = await self._image_status(image)
            if present is not None:
                return present
            if pull_policy == "Never":
                raise ImageError(f"image {image} is not present and imagePullPolicy is Never")
        await self._call(
            "PullImage",
            pb.PullImageRequest(image=pb.ImageSpec(image=image)),
            pb.PullImageResponse,
            f"of image {image}",
            error=ImageError,
        )
        pulled = await self._image_status(image)
        if pulled is None:
            raise ImageError(f"image {image} was pulled but the runtime does not list it")
        return pulled

    async def _image_status(self, image: str) -> ImageInfo | None:
        try:
            status = await self._call(
                "ImageStatus",
                pb.ImageStatusRequest(image=pb.ImageSpec(image=image)),
                pb.ImageStatusResponse,
                f"of image {image}",
            )
        except _NotFoundError:
            return None
        if not status.HasField("image") or not status.image.id:
            return None
        found = status.image
        return ImageInfo(
            id=found.repo_digests[0] if found.repo_digests else found.id,
            uid=found.uid.value if found.HasField("uid") else None,
            username=found.username,
        )

    # --- sandboxes -----------------------------------------------------------------------------------------

    async def run_sandbox(self, config: SandboxConfig) -> str:
        resp = await self._call(
            "RunPodSandbox",
            pb.RunPodSandboxRequest(config=_sandbox_config(config)),
            pb.RunPodSandboxResponse,
            f"for pod {config.namespace}/{config.name} (uid {config.uid}, attempt {config.attempt})",
        )
        return resp.pod_sandbox_id

    async def stop_sandbox(self, sandbox_id: str) -> None:
        """Stops the sandbox and every container in it; a sandbox that is already gone counts as stopped."""
        try:
            await self._call(
                "StopPodSandbox",
                pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                pb.StopPodSandboxResponse,
                f"sandbox {sandbox_id}",
            )
        except _NotFoundError:
            return

    async def remove_sandbox(self, sandbox_id: str) -> None:
        try:
            await self._call(
                "RemovePodSandbox",
                pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                pb.RemovePodSandboxResponse,
                f"sandbox {sandbox_id}",
            )
        except _NotFoundError:
            return

    async def list_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox, with the IP of the ready ones (from PodSandboxStatus; empty for host network)."""
        resp = await self._call("ListPodSandbox", pb.ListPodSandboxRequest(), pb.ListPodSandboxResponse, "")
        ips = await asyncio.gather(
            *(self._sandbox_ip(s.id) if s.state == pb.SANDBOX_READY else _empty() for s in resp.items)
        )
        ready = {s.id for s in resp.items if s.state == pb.SANDBOX_READY}
        for gone in self._sandbox_ips.keys() - ready:
            del self._sandbox_ips[gone]
        return [
            SandboxInfo(
                id=s.id,
                state=SandboxState.READY if s.state == pb.SANDBOX_READY else SandboxState.NOT_READY,
                labels=dict(s.labels),
                created_at_ns=s.created_at,
                ip=ip,
            )
            for s, ip in zip(resp.items, ips, strict=True)
        ]

    async def _sandbox_ip(self, sandbox_id: str) -> str:
        if known := self._sandbox_ips.get(sandbox_id):
            return known
        try:
            resp = await self._call(
                "PodSandboxStatus",
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                pb.PodSandboxStatusResponse,
                f"of sandbox {sandbox_id}",
            )
        except _NotFoundError:  # removed since the list
            return ""
        ip: str = resp.status.network.ip
        if ip:  # an empty one is asked again: a pod must not be left without its IP
            self._sandbox_ips[sandbox_id] = ip
        return ip

    # --- containers ----------------------------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str:
        resp = await self._call(
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                config=_container_config(config, sandbox),
                sandbox_config=_sandbox_config(sandbox),
            ),
            pb.CreateContainerResponse,
            f"{config.name} (attempt {config.attempt}) in pod {sandbox.namespace}/{sandbox.name}"
            f" (sandbox {sandbox_id})",
        )
        return resp.container_id

    async def start_container(self, container_id: str) -> None:
        await self._call(
            "StartContainer",
            pb.StartContainerRequest(container_id=container_id),
            pb.StartContainerResponse,
            f"container {container_id}",
        )

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        """SIGTERM (the image's stop signal), SIGKILL after ``timeout_s``; a container already gone is stopped."""
        try:
            await self._call(
                "StopContainer",
                pb.StopContainerRequest(container_id=container_id, timeout=max(0, timeout_s)),
                pb.StopContainerResponse,
                f"container {container_id}",
                deadline_s=self.timeout + max(0, timeout_s),
            )
        except _NotFoundError:
            return

    async def remove_container(self, container_id: str) -> None:
        try:
            await self._call(
                "RemoveContainer",
                pb.RemoveContainerRequest(container_id=container_id),
                pb.RemoveContainerResponse,
                f"container {container_id}",
            )
        except _NotFoundError:
            return

    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerInfo]:
        """Every container (or those of one sandbox) in full: one ContainerStatus each, as the kubelet does."""
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id or ""))
        what = f"in sandbox {sandbox_id}" if sandbox_id else ""
        resp = await self._call("ListContainers", request, pb.ListContainersResponse, what)
        statuses = await asyncio.gather(*(self._status_or_none(c) for c in resp.containers))
        if not sandbox_id:
            for gone in self._statuses.keys() - {c.id for c in resp.containers}:
                del self._statuses[gone]
        return [s for s in statuses if s is not None]

    async def _status_or_none(self, container: pb.Container) -> ContainerInfo | None:
        known = self._statuses.get(container.id)
        state = _CONTAINER_STATES.get(container.state, ContainerState.UNKNOWN)
        if (
            known is not None
            and known.state is state
            and state is not ContainerState.UNKNOWN
            and known.sandbox_id == container.pod_sandbox_id
        ):
            return known
        try:
            info = await self._status(container.id, container.pod_sandbox_id)
        except _NotFoundError:  # removed since the list
            return None
        self._statuses[container.id] = info
        return info

    async def container_status(self, container_id: str) -> ContainerInfo:
        # ContainerStatus does not say which sandbox the container is in; ListContainers (by id) does.
        listed, info = await asyncio.gather(
            self._call(
                "ListContainers",
                pb.ListContainersRequest(filter=pb.ContainerFilter(id=container_id)),
                pb.ListContainersResponse,
                f"with id {container_id}",
            ),
            self._status(container_id, ""),
        )
        sandbox_id = next((c.pod_sandbox_id for c in listed.containers if c.id == info.id), "")
        info = self._statuses[container_id] = replace(info, sandbox_id=sandbox_id)
        return info

    async def _status(self, container_id: str, sandbox_id: str) -> ContainerInfo:
        resp = await self._call(
            "ContainerStatus",
            pb.ContainerStatusRequest(container_id=container_id),
            pb.ContainerStatusResponse,
            f"of container {container_id}",
        )
        return _container_info(resp.status, sandbox_id)

    # --- streaming and stats -------------------------------------------------------------------------------

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        request = pb.ExecRequest(container_id=container_id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)
        resp = await self._call("Exec", request, pb.ExecResponse, f"in container {container_id}")
        return resp.url

    async def attach_url(self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        request = pb.AttachRequest(container_id=container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)
        resp = await self._call("Attach", request, pb.AttachResponse, f"to container {container_id}")
        return resp.url

    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        request = pb.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports)
        resp = await self._call("PortForward", request, pb.PortForwardResponse, f"to sandbox {sandbox_id}")
        return resp.url

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult:
        resp = await self._call(
            "ExecSync",
            pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout_s),
            pb.ExecSyncResponse,
            f"in container {container_id}",
            deadline_s=timeout_s + self.timeout if timeout_s else None,
        )
        return ExecResult(resp.stdout, resp.stderr, resp.exit_code)

    async def container_usage(self) -> list[ContainerUsage]:
        resp = await self._call("ListContainerStats", pb.ListContainerStatsRequest(), pb.ListContainerStatsResponse, "")
        return [
            ContainerUsage(
                container_id=stat.attributes.id,
                name=stat.attributes.metadata.name,
                labels=dict(stat.attributes.labels),
                timestamp_ns=stat.cpu.timestamp or stat.memory.timestamp,
                cpu_core_ns=stat.cpu.usage_core_nano_seconds.value,
                memory_working_set=stat.memory.working_set_bytes.value,
                memory_usage=stat.memory.usage_bytes.value,
                memory_rss=stat.memory.rss_bytes.value,
            )
            for stat in resp.stats
        ]


async def _empty() -> str:
    return ""


# --- conversions -------------------------------------------------------------------------------------------


def _sandbox_config(config: SandboxConfig) -> pb.PodSandboxConfig:
    security = config.security
    labels = {POD_NAME: config.name, POD_NAMESPACE: config.namespace, POD_UID: config.uid, **config.labels}
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=config.name, uid=config.uid, namespace=config.namespace, attempt=config.attempt
        ),
        # runc refuses a hostname without a private UTS namespace, and host network shares the node's.
        hostname="" if config.host_network else config.hostname,
        log_directory=config.log_directory,
        labels=labels,
        annotations=dict(config.annotations),
        port_mappings=[
            pb.PortMapping(
                protocol=_PROTOCOLS[p.protocol],
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in config.port_mappings
        ],
        dns_config=(
            pb.DNSConfig(servers=config.dns.servers, searches=config.dns.searches, options=config.dns.options)
            if config.dns is not None
            else None
        ),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=config.cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=_namespaces(sandbox=config),
                run_as_user=_int64(security.run_as_user),
                run_as_group=_int64(security.run_as_group),
                supplemental_groups=list(security.supplemental_groups),
                privileged=security.privileged,
            ),
            sysctls=dict(security.sysctls),
        ),
    )


def _namespaces(*, sandbox: SandboxConfig) -> pb.NamespaceOption:
    """Network: the node's or the pod's; PID: the node's (hostPID), the pod's (shareProcessNamespace) or each
    container its own (the v1 PodSpec default the kubelet sets); IPC: the node's (hostIPC) or the pod's."""
    security = sandbox.security
    pid = pb.NODE if security.host_pid else pb.POD if security.share_pid else pb.CONTAINER
    return pb.NamespaceOption(
        network=pb.NODE if sandbox.host_network else pb.POD, pid=pid, ipc=pb.NODE if security.host_ipc else pb.POD
    )


def _int64(value: int | None) -> pb.Int64Value | None:
    return None if value is None else pb.Int64Value(value=value)


# What the kubelet masks and makes read-only in every unprivileged container (procMount Default).
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_SECCOMP = {
    "RuntimeDefault": pb.SecurityProfile.RuntimeDefault,
    "Unconfined": pb.SecurityProfile.Unconfined,
    "Localhost": pb.SecurityProfile.Localhost,
}


def _container_config(config: ContainerConfig, sandbox: SandboxConfig) -> pb.ContainerConfig:
    labels = {
        POD_NAME: sandbox.name,
        POD_NAMESPACE: sandbox.namespace,
        POD_UID: sandbox.uid,
        CONTAINER_NAME: config.name,
        **config.labels,
    }
    annotations = {RESTART_COUNT: str(config.attempt), **config.annotations}
    r = config.resources
    security = config.security
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=config.name, attempt=config.attempt),
        image=pb.ImageSpec(image=config.image, user_specified_image=config.image),
        command=list(config.command),
        args=list(config.args),
        working_dir=config.working_dir,
        envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in config.env.items()],
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly) for m in config.mounts
        ],
        labels=labels,
        annotations=annotations,
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(
                cpu_period=r.cpu_period,
                cpu_quota=r.cpu_quota,
                cpu_shares=r.cpu_shares,
                memory_limit_in_bytes=r.memory_limit_bytes,
            ),
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=_namespaces(sandbox=sandbox),
                capabilities=pb.Capability(
                    add_capabilities=list(security.capabilities.add),
                    drop_capabilities=list(security.capabilities.drop),
                ),
                privileged=security.privileged,
                run_as_user=_int64(security.run_as_user),
                run_as_group=_int64(security.run_as_group),
                readonly_rootfs=security.readonly_rootfs,
                supplemental_groups=list(security.supplemental_groups),
                no_new_privs=security.no_new_privs,
                masked_paths=[] if security.privileged else list(MASKED_PATHS),
                readonly_paths=[] if security.privileged else list(READONLY_PATHS),
                seccomp=pb.SecurityProfile(
                    profile_type=_SECCOMP.get(security.seccomp, pb.SecurityProfile.Unconfined),
                    localhost_ref=security.seccomp_localhost,
                ),
            ),
        ),
    )


def _container_info(status: pb.ContainerStatus, sandbox_id: str) -> ContainerInfo:
    state = _CONTAINER_STATES.get(status.state, ContainerState.UNKNOWN)
    reason = status.reason
    if state is ContainerState.EXITED and not reason:
        reason = "Completed" if status.exit_code == 0 else "Error"
    return ContainerInfo(
        id=status.id,
        sandbox_id=sandbox_id,
        name=status.metadata.name or status.labels.get(CONTAINER_NAME, ""),
        state=state,
        labels=dict(status.labels),
        annotations=dict(status.annotations),
        attempt=status.metadata.attempt,
        image=status.image.user_specified_image or status.image.image,
        created_at_ns=status.created_at,
        started_at_ns=status.started_at,
        finished_at_ns=status.finished_at,
        exit_code=status.exit_code,
        reason=reason,
        message=status.message,
        log_path=status.log_path,
        image_id=status.image_ref,
    )
