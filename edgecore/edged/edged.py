"""Edged: makes the runtime match the pods in the edge's store, and reports what it sees.

Level-triggered, like the kubelet's sync loop: each round reads the desired pods from SQLite and the
sandboxes and containers from the runtime (found by the kubelet's labels), and closes the gap. Nothing else
is remembered between rounds that matters for correctness, so after a restart of EdgeCore (even with the
cloud unreachable) the same round adopts the containers that are still running instead of starting
duplicates. Statuses go up through the durable outbox, latest per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common import upstream
from common.logging import get_logger
from common.upstream import UpstreamPublisher
from edgecore.edged import spec as podspec
from edgecore.edged.runtime import (
    CONTAINER_NAME,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerState,
    ImageError,
    SandboxConfig,
    SandboxInfo,
    SandboxState,
)
from edgecore.edged.status import Waiting, container_status, pod_status

log = get_logger(__name__)


class PodStore(Protocol):
    """What Edged reads from the MetaStore: the desired pods and the objects they reference."""

    async def list_kind(self, kind: str) -> list[Any]: ...
    async def get(self, kind: str, namespace: str | None, name: str) -> Any: ...


CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class _Backoff:
    """CrashLoopBackOff: 10 s, doubling, at most 5 min; forgotten after 10 min of running."""

    initial: float
    cap: float = 300.0
    delay: float = 0.0
    not_before: float = 0.0

    def failed(self, now: float) -> None:
        self.delay = self.initial if self.delay == 0 else min(self.cap, self.delay * 2)
        self.not_before = now + self.delay


@dataclass
class EdgedStats:
    syncs: int = 0
    sandboxes_started: int = 0
    containers_started: int = 0
    adopted: int = 0
    pods_removed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Edged:
    def __init__(
        self,
        *,
        node_name: str,
        store: PodStore,
        runtime: ContainerRuntime,
        root: Path,
        publish: UpstreamPublisher,
        host_ip: str,
        sync_interval: float = 2.0,
        restart_backoff: float = 10.0,
        cgroup_root: Path = CGROUP_ROOT,
    ) -> None:
        self.node_name = node_name
        self._store = store
        self._runtime = runtime
        self._root = root
        self._publish = publish
        self._host_ip = host_ip
        self._interval = sync_interval
        self._restart_backoff = restart_backoff
        self._cgroup_root = cgroup_root
        self._wake = asyncio.Event()
        self._backoffs: dict[tuple[str, str], _Backoff] = {}
        self._reported: dict[str, dict[str, Any]] = {}  # pod uid → last status published
        self._deleting_reported: set[str] = set()
        self._adopted_seen: set[str] = set()
        self.stats = EdgedStats()

    def wake(self, *_: object) -> None:
        """Something changed (a pod, a configmap): sync now rather than at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except ContainerRuntimeError as exc:
                log.warning("runtime_unavailable", error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()

    async def sync_once(self) -> None:
        self.stats.syncs += 1
        pods = [
            p for p in await self._store.list_kind("pod") if (p.get("spec") or {}).get("nodeName") == self.node_name
        ]
        sandboxes = await self._runtime.list_sandboxes()
        containers = await self._runtime.list_containers()
        by_uid: dict[str, list[SandboxInfo]] = {}
        for sandbox in sandboxes:
            uid = sandbox.labels.get(POD_UID)
            if uid:
                by_uid.setdefault(uid, []).append(sandbox)
        in_sandbox: dict[str, list[ContainerInfo]] = {}
        for container in containers:
            in_sandbox.setdefault(container.sandbox_id, []).append(container)
        wanted = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            wanted.add(uid)
            try:
                await self._sync_pod(pod, by_uid.get(uid, []), in_sandbox)
            except ContainerRuntimeError as exc:
                self._count("sync_pod")
                log.warning("pod_sync_failed", pod=_name(pod), error=str(exc))
        for uid, leftover in by_uid.items():
            if uid not in wanted:
                await self._remove_pod(uid, leftover, in_sandbox, grace_s=2)
        for uid in list(self._reported):
            if uid not in wanted:
                del self._reported[uid]

    # --- one pod ----------------------------------------------------------------------------------------

    async def _sync_pod(
        self, pod: dict[str, Any], sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]]
    ) -> None:
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            await self._terminate(pod, sandboxes, in_sandbox)
            return
        ready = [s for s in sandboxes if s.state is SandboxState.READY]
        for stale in [s for s in sandboxes if s.state is not SandboxState.READY]:
            await self._remove_sandbox(stale, in_sandbox.get(stale.id, []), grace_s=0)
        sandbox = max(ready, key=lambda s: s.created_at_ns) if ready else None
        for extra in ready:
            if extra is not sandbox:  # two sandboxes for one pod: keep the newest
                await self._remove_sandbox(extra, in_sandbox.get(extra.id, []), grace_s=0)
        if sandbox is not None and uid not in self._adopted_seen and self.stats.syncs == 1:
            self.stats.adopted += 1
            log.info("pod_adopted", pod=_name(pod), sandbox=sandbox.id[:12])
        self._adopted_seen.add(uid)
        sandbox_config = self._sandbox_config(pod, attempt=len(sandboxes))
        waiting: dict[str, Waiting] = {}
        if sandbox is None:
            try:
                sandbox_id = await self._runtime.run_sandbox(sandbox_config)
            except ContainerRuntimeError as exc:
                # e.g. a pod network without a CNI configuration: say so in the pod's status, try again later
                log.warning("sandbox_failed", pod=_name(pod), error=str(exc))
                failed = Waiting("CreatePodSandboxError", str(exc))
                specs = (pod.get("spec") or {}).get("containers") or []
                await self._report(pod, None, [container_status(c, None, None, failed) for c in specs])
                return
            self.stats.sandboxes_started += 1
            log.info("sandbox_started", pod=_name(pod), sandbox=sandbox_id[:12])
            sandbox = next((s for s in await self._runtime.list_sandboxes() if s.id == sandbox_id), None)
            own: list[ContainerInfo] = []
        else:
            own = in_sandbox.get(sandbox.id, [])
        statuses = []
        for spec in (pod.get("spec") or {}).get("containers") or []:
            mine = sorted((c for c in own if c.name == spec["name"]), key=lambda c: (c.attempt, c.created_at_ns))
            latest = mine[-1] if mine else None
            previous = mine[-2] if len(mine) > 1 else None
            if sandbox is not None:
                outcome = await self._sync_container(
                    pod, spec, sandbox_id=sandbox.id, sandbox_config=sandbox_config, history=mine
                )
                if isinstance(outcome, Waiting):
                    waiting[spec["name"]] = outcome
                elif outcome is not None:
                    previous, latest = latest, outcome
            statuses.append(container_status(spec, latest, previous, waiting.get(spec["name"])))
        await self._report(pod, sandbox, statuses)

    async def _sync_container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        *,
        sandbox_id: str,
        sandbox_config: SandboxConfig,
        history: list[ContainerInfo],
    ) -> ContainerInfo | Waiting | None:
        """Start or restart the container if it should run: its new state, why it waits, or None (no change)."""
        latest = history[-1] if history else None
        if latest is not None and latest.state is ContainerState.RUNNING:
            return None
        if latest is not None and latest.state is ContainerState.CREATED:
            await self._runtime.start_container(latest.id)
            return await self._runtime.container_status(latest.id)
        if latest is not None:
            gate = self._may_restart(pod, spec, latest)
            if gate is not True:
                return gate or None
        try:
            config = await self._container_config(pod, spec, attempt=(latest.attempt + 1) if latest else 0)
            await self._runtime.ensure_image(spec["image"], _pull_policy(spec))
        except podspec.SpecError as exc:
            return Waiting("CreateContainerConfigError", str(exc))
        except ImageError as exc:
            return Waiting("ErrImageNeverPull" if _pull_policy(spec) == "Never" else "ImagePullBackOff", str(exc))
        container_id = await self._runtime.create_container(sandbox_id, config, sandbox_config)
        await self._runtime.start_container(container_id)
        self.stats.containers_started += 1
        for old in history[:-1]:  # keep the last exited instance for lastState, remove older ones
            with contextlib.suppress(ContainerRuntimeError):
                await self._runtime.remove_container(old.id)
        log.info("container_started", pod=_name(pod), container=spec["name"], attempt=config.attempt)
        return await self._runtime.container_status(container_id)

    def _may_restart(self, pod: dict[str, Any], spec: dict[str, Any], exited: ContainerInfo) -> Waiting | bool:
        """restartPolicy, then CrashLoopBackOff: the first restart is immediate, later ones wait 10 s, 20 s, …"""
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and exited.exit_code == 0):
            return False
        backoff = self._backoffs.setdefault((pod["metadata"]["uid"], spec["name"]), _Backoff(self._restart_backoff))
        now = time.monotonic()
        if now < backoff.not_before:
            return Waiting(
                "CrashLoopBackOff", f"back-off {backoff.delay:.0f}s restarting failed container={spec['name']}"
            )
        if exited.finished_at_ns - exited.started_at_ns > 600e9:
            backoff.delay = 0  # it ran for ten minutes: start the backoff afresh
        backoff.failed(now)
        return True

    async def _terminate(
        self, pod: dict[str, Any], sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]]
    ) -> None:
        """The pod is being deleted: stop it within its grace period, then tell the cloud it is gone."""
        uid = pod["metadata"]["uid"]
        grace = int(
            pod["metadata"].get("deletionGracePeriodSeconds")
            or (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        )
        await self._remove_pod(uid, sandboxes, in_sandbox, grace_s=grace)
        if uid not in self._deleting_reported:
            self._deleting_reported.add(uid)
            namespace, name = pod["metadata"].get("namespace", "default"), pod["metadata"]["name"]
            await self._publish(upstream.pod_deleted(namespace, name, uid))

    async def _remove_pod(
        self, uid: str, sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]], *, grace_s: int
    ) -> None:
        for sandbox in sandboxes:
            await self._remove_sandbox(sandbox, in_sandbox.get(sandbox.id, []), grace_s=grace_s)
        shutil.rmtree(self._root / "pods" / uid, ignore_errors=True)
        for controller in self._cgroup_root.glob("*"):
            with contextlib.suppress(OSError):  # containerd leaves the parent cgroup behind
                (controller / "kubepods" / f"pod{uid}").rmdir()
        self._backoffs = {k: v for k, v in self._backoffs.items() if k[0] != uid}
        self._adopted_seen.discard(uid)
        if sandboxes:
            self.stats.pods_removed += 1
            log.info("pod_removed", uid=uid)

    async def _remove_sandbox(self, sandbox: SandboxInfo, containers: list[ContainerInfo], *, grace_s: int) -> None:
        running = [c for c in containers if c.state is ContainerState.RUNNING]
        await asyncio.gather(*(self._runtime.stop_container(c.id, grace_s) for c in running))
        for container in containers:
            with contextlib.suppress(ContainerRuntimeError):
                await self._runtime.remove_container(container.id)
        try:
            await self._runtime.stop_sandbox(sandbox.id)
        except ContainerRuntimeError as exc:  # e.g. its network cannot be torn down; removal may still work
            log.warning("sandbox_stop_failed", sandbox=sandbox.id[:12], error=str(exc))
        await self._runtime.remove_sandbox(sandbox.id)

    # --- configs -----------------------------------------------------------------------------------------

    def _log_dir(self, pod: dict[str, Any]) -> Path:
        m = pod["metadata"]
        return self._root / "logs" / "pods" / f"{m.get('namespace', 'default')}_{m['name']}_{m['uid']}"

    def _sandbox_config(self, pod: dict[str, Any], *, attempt: int) -> SandboxConfig:
        m, spec = pod["metadata"], pod.get("spec") or {}
        host_network = bool(spec.get("hostNetwork"))
        log_dir = self._log_dir(pod)
        log_dir.mkdir(parents=True, exist_ok=True)
        return SandboxConfig(
            name=m["name"],
            namespace=m.get("namespace", "default"),
            uid=m["uid"],
            attempt=attempt,
            hostname="" if host_network else m["name"][:63],
            host_network=host_network,
            log_directory=str(log_dir),
            cgroup_parent=f"/kubepods/pod{m['uid']}",
            labels={POD_NAME: m["name"], POD_NAMESPACE: m.get("namespace", "default"), POD_UID: m["uid"]},
        )

    async def _container_config(self, pod: dict[str, Any], spec: dict[str, Any], *, attempt: int) -> ContainerConfig:
        m = pod["metadata"]
        lookup = self._lookup
        env = await podspec.environment(pod, spec, lookup)
        volumes = await podspec.prepare_volumes(pod, self._root / "pods" / m["uid"], lookup)
        return ContainerConfig(
            name=spec["name"],
            image=spec["image"],
            command=list(spec.get("command") or []),
            args=list(spec.get("args") or []),
            env=env,
            working_dir=spec.get("workingDir", ""),
            mounts=podspec.mounts(spec, volumes),
            log_path=f"{spec['name']}/{attempt}.log",
            attempt=attempt,
            resources=podspec.resources(spec),
            labels={
                POD_NAME: m["name"],
                POD_NAMESPACE: m.get("namespace", "default"),
                POD_UID: m["uid"],
                CONTAINER_NAME: spec["name"],
            },
        )

    async def _lookup(self, kind: str, namespace: str, name: str) -> Any:
        return await self._store.get(kind, namespace, name)

    # --- status ------------------------------------------------------------------------------------------

    async def _report(self, pod: dict[str, Any], sandbox: SandboxInfo | None, containers: list[dict[str, Any]]) -> None:
        m = pod["metadata"]
        status = pod_status(pod, sandbox, containers, host_ip=self._host_ip, now=_now())
        comparable = {
            **status,
            "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]],
        }
        if self._reported.get(m["uid"]) == comparable:
            return
        self._reported[m["uid"]] = comparable
        namespace = m.get("namespace", "default")
        await self._publish(upstream.pod_status(namespace, m["name"], m["uid"], status))
        log.info("pod_status", pod=_name(pod), phase=status["phase"])

    def reported_status(self, uid: str) -> dict[str, Any] | None:
        """The status last sent up for a pod (the node's ``/pods`` and ``/stats/summary`` show it)."""
        return self._reported.get(uid)

    def _count(self, what: str) -> None:
        self.stats.errors[what] = self.stats.errors.get(what, 0) + 1


def _name(pod: dict[str, Any]) -> str:
    return f"{pod['metadata'].get('namespace', 'default')}/{pod['metadata']['name']}"


def _pull_policy(spec: dict[str, Any]) -> str:
    """The container's imagePullPolicy, defaulted as Kubernetes does: Always for :latest or no tag."""
    if spec.get("imagePullPolicy"):
        return str(spec["imagePullPolicy"])
    image = str(spec["image"])
    return "Always" if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] else "IfNotPresent"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
