"""Edged: makes the runtime match the pods in the edge's store, and reports what it sees.

Level-triggered, like the kubelet's sync loop: each round reads the desired pods from SQLite and the
sandboxes and containers from the runtime (found by the kubelet's labels), and hands each pod to its own
worker to close the gap, so one pod that takes long (a 30 s grace period, a slow image) holds up no other;
a pod whose worker is still busy is looked at again as soon as it is done. Nothing else is remembered between
rounds that matters for correctness, so after a restart of EdgeCore (even with the cloud unreachable) the
same round adopts the containers that are still running instead of starting duplicates. Statuses go up
through the durable outbox, latest per pod; events (events.py) beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common import upstream
from common.logging import get_logger
from common.upstream import UpstreamPublisher
from edgecore.edged import network as podnet
from edgecore.edged import probes
from edgecore.edged import security as podsecurity
from edgecore.edged import spec as podspec
from edgecore.edged import termination as podtermination
from edgecore.edged import volumes as podvolumes
from edgecore.edged.events import EventRecorder
from edgecore.edged.runtime import (
    CONTAINER_NAME,
    NODE_NAME,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerState,
    ImageError,
    Mount,
    PortMapping,
    SandboxConfig,
    SandboxInfo,
    SandboxState,
)
from edgecore.edged.status import Init, Terminal, Waiting, container_status, pod_status

log = get_logger(__name__)


class PodStore(Protocol):
    """What Edged reads from the MetaStore: the desired pods and the objects they reference."""

    async def list_kind(self, kind: str) -> list[Any]: ...
    async def get(self, kind: str, namespace: str | None, name: str) -> Any: ...


class _Changed(Protocol):
    """An object the cloud changed at the edge (the MetaStore's Change)."""

    @property
    def resource(self) -> str: ...


CGROUP_ROOT = Path("/sys/fs/cgroup")
VOLUME_REFRESH_S = 60.0  # a pod's volumes are written again at least this often, changed or not
VOLUME_SOURCE_KINDS = frozenset({"configmap", "secret"})
HOOK_TIMEOUT_S = 30.0  # a postStart hook's time limit (the kubelet has none; a hung hook must not hang the pod)


@dataclass(frozen=True)
class _PodContext:
    """What one sync of a pod knows once its sandbox and volumes are there."""

    pod: dict[str, Any]
    sandbox: SandboxInfo
    sandbox_config: SandboxConfig
    own: list[ContainerInfo]  # the containers in its sandbox
    volumes: dict[str, Path]


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
        tokens: podvolumes.TokenGetter | None = None,
        forget_tokens: Callable[[set[str]], Awaitable[None]] | None = None,
        network: podnet.PodNetwork | None = None,
        dns: podnet.DnsSettings | None = None,
        events: EventRecorder | None = None,
        kubernetes_service: str = "",
        allowed_unsafe_sysctls: frozenset[str] = frozenset(),
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
        self._tokens = tokens
        self._forget_tokens = forget_tokens
        self._network = network
        self._dns = dns or podnet.DnsSettings()
        self._events = events
        self._service_env = podspec.kubernetes_service_env(kubernetes_service)
        self._unsafe_sysctls = allowed_unsafe_sysctls
        self._prober = probes.Prober(runtime, self.wake)
        self._wake = asyncio.Event()
        self._backoffs: dict[tuple[str, str], _Backoff] = {}
        self._reported: dict[str, dict[str, Any]] = {}  # pod uid → last status published
        self._deleting_reported: set[str] = set()
        self._adopted_seen: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}  # pod uid → the worker syncing it now
        self._again: set[str] = set()  # pods that changed while their worker was busy
        # Each sync looks at every pod, and writing a pod's volumes was the largest part of it (a quarter of
        # EdgeCore's time while pods start): they are written again only when what they come from changed
        # (the pod, its IPs, any configmap or secret) or VOLUME_REFRESH_S went by (projected tokens renew).
        self._volume_sources = 0  # bumped on every configmap or secret change
        self._volumes_done: dict[str, tuple[tuple[object, ...], float, dict[str, Path]]] = {}  # uid → key, when, paths
        # The configuration each pod's sandbox was made with, kept while the pod's resourceVersion holds: every
        # sync of every pod needs it, and building it creates the log directory and reads the host's resolv.conf.
        self._sandbox_configs: dict[str, tuple[str, SandboxConfig]] = {}  # uid → resourceVersion, config
        self.stats = EdgedStats()

    def wake(self, *_: object) -> None:
        """Something changed (a pod, a configmap): sync now rather than at the next interval."""
        self._wake.set()

    def on_changes(self, changes: Sequence[_Changed]) -> None:
        """The cloud changed objects at the edge: volumes made from configmaps and secrets may be stale."""
        if any(_kind(change.resource) in VOLUME_SOURCE_KINDS for change in changes):
            self._volume_sources += 1
        self.wake()

    def resend_statuses(self, connected: bool = True) -> None:
        """Connected again: report every pod's status afresh, since the cloud may have overwritten it meanwhile
        (the node-lifecycle controller marks the pods of a NotReady node not ready)."""
        if connected:
            self._reported.clear()
            self.wake()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.sync_once(wait=False)
                except ContainerRuntimeError as exc:
                    log.warning("runtime_unavailable", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            workers = list(self._workers.values())
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._prober.close()

    async def sync_once(self, *, wait: bool = True) -> None:
        """One round: every pod handed to its worker; with ``wait``, until the workers started now are done."""
        self.stats.syncs += 1
        pods = [
            p for p in await self._store.list_kind("pod") if (p.get("spec") or {}).get("nodeName") == self.node_name
        ]
        sandboxes = [s for s in await self._runtime.list_sandboxes() if s.labels.get(NODE_NAME) == self.node_name]
        ours = {s.id for s in sandboxes}
        containers = [c for c in await self._runtime.list_containers() if c.sandbox_id in ours]
        if self.stats.syncs == 1 and self._network is not None:
            # Before any worker can be creating a sandbox: free addresses whose sandboxes went while we were down.
            self._network.release_leaked({s.id for s in sandboxes})
        by_uid: dict[str, list[SandboxInfo]] = {}
        for sandbox in sandboxes:
            uid = sandbox.labels.get(POD_UID)
            if uid:
                by_uid.setdefault(uid, []).append(sandbox)
        in_sandbox: dict[str, list[ContainerInfo]] = {}
        for container in containers:
            in_sandbox.setdefault(container.sandbox_id, []).append(container)
        self._prober.forget({c.id for c in containers if c.state is ContainerState.RUNNING})
        started: list[asyncio.Task[None]] = []
        wanted = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            wanted.add(uid)
            work = functools.partial(self._sync_pod, pod, by_uid.get(uid, []), in_sandbox)
            started += self._dispatch(uid, _name(pod), work)
        for uid, leftover in by_uid.items():
            if uid not in wanted:
                started += self._dispatch(uid, uid, functools.partial(self._remove_pod, uid, leftover, in_sandbox, 2))
        self._forget_gone(wanted)
        if self._forget_tokens is not None and self.stats.syncs % 30 == 1:
            await self._forget_tokens(wanted)
        if wait and started:
            await asyncio.gather(*started)

    def _forget_gone(self, wanted: set[str]) -> None:
        """What was kept about pods that are no longer on the node."""
        for kept in (self._reported, self._volumes_done, self._sandbox_configs):
            for uid in kept.keys() - wanted:
                del kept[uid]
        self._deleting_reported &= wanted

    def _dispatch(self, uid: str, what: str, work: Callable[[], Awaitable[None]]) -> list[asyncio.Task[None]]:
        """Start ``work`` as the pod's worker, unless one is busy with it: then it is looked at once more after."""
        busy = self._workers.get(uid)
        if busy is not None and not busy.done():
            self._again.add(uid)
            return []
        task = asyncio.create_task(self._work(uid, what, work), name=f"pod-worker {what}")
        self._workers[uid] = task
        return [task]

    async def _work(self, uid: str, what: str, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except ContainerRuntimeError as exc:
            self._count("sync_pod")
            log.warning("pod_sync_failed", pod=what, error=str(exc))
        except Exception:  # one pod's bug must not stop the others
            self._count("sync_pod")
            log.exception("pod_sync_crashed", pod=what)
        finally:
            if self._workers.get(uid) is asyncio.current_task():
                del self._workers[uid]
            if uid in self._again:
                self._again.discard(uid)
                self.wake()

    # --- one pod ----------------------------------------------------------------------------------------

    async def _sync_pod(
        self, pod: dict[str, Any], sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]]
    ) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            await self._terminate(pod, sandboxes, in_sandbox)
            return
        spec = pod.get("spec") or {}
        specs = spec.get("containers") or []
        inits = spec.get("initContainers") or []
        try:
            sandbox_security = podsecurity.sandbox_security(pod, self._unsafe_sysctls)
        except podsecurity.Rejected as exc:  # the kubelet's admission: the pod fails, nothing starts
            await self._event(pod, "Warning", exc.reason, str(exc))
            statuses = [container_status(c, None, None, Waiting("ContainerCreating")) for c in specs]
            await self._report(pod, None, statuses, terminal=Terminal(exc.reason, str(exc)))
            return
        sandbox = await self._current_sandbox(pod, sandboxes, in_sandbox)
        sandbox_config = self._sandbox_config(
            pod, attempt=len(sandboxes), security=sandbox_security, new=sandbox is None
        )
        own: list[ContainerInfo] = []
        if sandbox is None:
            sandbox = await self._start_sandbox(pod, sandbox_config, specs)
            if sandbox is None:
                return
        else:
            own = in_sandbox.get(sandbox.id, [])
        deadline = self._past_deadline(pod, sandbox)
        if deadline is not None:
            await self._stop_for_good(pod, sandbox, own, deadline)
            return
        try:  # every sync, not only before a start: configmaps, labels and tokens reach running containers
            volumes = await self._volumes(pod, sandbox)
        except podspec.SpecError as exc:
            await self._event(pod, "Warning", "FailedMount", str(exc))
            blocked = Waiting("CreateContainerConfigError", str(exc))
            statuses = []
            for container in specs:
                current = next(reversed(_history(own, container)), None)
                running = current is not None and current.state is ContainerState.RUNNING
                statuses.append(self._status(pod, container, current, None, None if running else blocked))
            await self._report(pod, sandbox, statuses, waiting_on=str(exc))
            return
        context = _PodContext(pod, sandbox, sandbox_config, own, volumes)
        init = await self._sync_init_containers(context, inits)
        if not init.done:
            waiting = Waiting("PodInitializing")
            statuses = [self._status(pod, c, next(reversed(_history(own, c)), None), None, waiting) for c in specs]
            await self._report(pod, sandbox, statuses, init=init)
            return
        statuses = [await self._sync_one(context, container) for container in specs]
        # Ephemeral containers (kubectl debug) are added to a running pod and never restarted.
        debug = [await self._sync_one(context, c, restart="Never") for c in spec.get("ephemeralContainers") or []]
        await self._report(pod, sandbox, statuses, init=init, ephemeral=debug)

    async def _sync_init_containers(self, context: _PodContext, inits: list[dict[str, Any]]) -> Init:
        """Init containers in order: each must succeed (a sidecar, ``restartPolicy: Always``, must have started)
        before the next starts. Once all are done they are never run again while the pod's sandbox lives, also
        after an EdgeCore restart: their exited instances are in the runtime, and say so."""
        pod = context.pod
        restart_policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        statuses: list[dict[str, Any]] = []
        blocked = False
        failed = False
        for container in inits:
            history = _history(context.own, container)
            latest = history[-1] if history else None
            sidecar = container.get("restartPolicy") == "Always"
            if blocked:
                statuses.append(self._status(pod, container, latest, None, Waiting("PodInitializing")))
                continue
            exited = not sidecar and latest is not None and latest.state is ContainerState.EXITED
            if exited and latest is not None and (latest.exit_code == 0 or restart_policy == "Never"):
                done = self._status(pod, container, latest, None, None)
                done["ready"] = latest.exit_code == 0  # an init container that succeeded counts as ready
                statuses.append(done)
                if latest.exit_code != 0:  # failed, and the pod never restarts: the pod fails
                    failed = blocked = True
                continue
            status = await self._sync_one(context, container, restart="Always" if sidecar else "OnFailure")
            statuses.append(status)
            if not (sidecar and status.get("started")):
                blocked = True
        return Init(statuses, done=not blocked, failed=failed)

    async def _sync_one(
        self, context: _PodContext, container: dict[str, Any], *, restart: str | None = None
    ) -> dict[str, Any]:
        """One container brought to where it should be; its status."""
        history = _history(context.own, container)
        latest = history[-1] if history else None
        previous = history[-2] if len(history) > 1 else None
        outcome = await self._sync_container(
            context.pod,
            container,
            sandbox=context.sandbox,
            sandbox_config=context.sandbox_config,
            history=history,
            volumes=context.volumes,
            restart=restart,
        )
        waiting = outcome if isinstance(outcome, Waiting) else None
        if isinstance(outcome, ContainerInfo):
            previous, latest = latest, outcome
        return self._status(context.pod, container, latest, previous, waiting, sandbox=context.sandbox)

    def _status(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        latest: ContainerInfo | None,
        previous: ContainerInfo | None,
        waiting: Waiting | None,
        *,
        sandbox: SandboxInfo | None = None,
    ) -> dict[str, Any]:
        """The container's status, with its probes' verdicts and its instances' termination messages."""
        pod_dir = self._root / "pods" / pod["metadata"]["uid"]
        latest, previous = (self._with_message(pod_dir, container, i) for i in (latest, previous))
        ready = started = True
        if latest is not None and latest.state is ContainerState.RUNNING and sandbox is not None:
            target = self._probe_target(pod, container, sandbox, latest)
            verdict = self._prober.ensure(container, target, time.monotonic(), self._unhealthy(pod, container))
            ready, started = verdict.ready, verdict.started
        return container_status(container, latest, previous, waiting, ready=ready, started=started)

    def _unhealthy(self, pod: dict[str, Any], container: dict[str, Any]) -> probes.EventSink:
        async def event(type_: str, reason: str, message: str) -> None:
            await self._event(pod, type_, reason, message, container=container["name"])

        return event

    @staticmethod
    def _with_message(pod_dir: Path, container: dict[str, Any], info: ContainerInfo | None) -> ContainerInfo | None:
        if info is None or info.state is not ContainerState.EXITED or info.message:
            return info
        text = podtermination.message(pod_dir, container, info.attempt, info.exit_code, info.log_path)
        return dataclasses.replace(info, message=text) if text else info

    def _probe_target(
        self, pod: dict[str, Any], container: dict[str, Any], sandbox: SandboxInfo, info: ContainerInfo
    ) -> probes.Target:
        pod_ip = self._runtime_status(pod, sandbox)["podIP"] or "127.0.0.1"
        named = {str(p["name"]): int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}
        return probes.Target(info.id, pod_ip, named)

    def _past_deadline(self, pod: dict[str, Any], sandbox: SandboxInfo) -> Terminal | None:
        """``activeDeadlineSeconds``: counted from the pod's start on this node (its first sandbox)."""
        seconds = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if seconds is None or not sandbox.created_at_ns:
            return None
        if time.time() - sandbox.created_at_ns / 1e9 < int(seconds):
            return None
        return Terminal("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")

    async def _stop_for_good(
        self, pod: dict[str, Any], sandbox: SandboxInfo, own: list[ContainerInfo], terminal: Terminal
    ) -> None:
        """The pod failed on the node's decision: stop its containers, keep them (for their logs), report."""
        running = [c for c in own if c.state is ContainerState.RUNNING]
        if running:
            await self._event(pod, "Normal", terminal.reason, terminal.message)
        grace = int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        await asyncio.gather(*(self._runtime.stop_container(c.id, grace) for c in running))
        specs = (pod.get("spec") or {}).get("containers") or []
        statuses = []
        for container in specs:
            latest = None
            history = _history(own, container)
            if history:
                with contextlib.suppress(ContainerRuntimeError):
                    latest = await self._runtime.container_status(history[-1].id)
            statuses.append(self._status(pod, container, latest, None, None))
        await self._report(pod, sandbox, statuses, terminal=terminal)

    async def _current_sandbox(
        self, pod: dict[str, Any], sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]]
    ) -> SandboxInfo | None:
        """The pod's ready sandbox (the newest, if several), once stale and extra ones are removed."""
        uid = pod["metadata"]["uid"]
        ready = [s for s in sandboxes if s.state is SandboxState.READY]
        for stale in [s for s in sandboxes if s.state is not SandboxState.READY]:
            if not ready:
                await self._event(
                    pod, "Normal", "SandboxChanged", "Pod sandbox changed, it will be killed and re-created."
                )
            await self._remove_sandbox(stale, in_sandbox.get(stale.id, []), grace_s=0)
        sandbox = max(ready, key=lambda s: s.created_at_ns) if ready else None
        for extra in ready:
            if extra is not sandbox:  # two sandboxes for one pod: keep the newest
                await self._remove_sandbox(extra, in_sandbox.get(extra.id, []), grace_s=0)
        if sandbox is not None and uid not in self._adopted_seen and self.stats.syncs == 1:
            self.stats.adopted += 1
            log.info("pod_adopted", pod=_name(pod), sandbox=sandbox.id[:12])
        self._adopted_seen.add(uid)
        return sandbox

    async def _start_sandbox(
        self, pod: dict[str, Any], config: SandboxConfig, specs: list[dict[str, Any]]
    ) -> SandboxInfo | None:
        """A new sandbox for the pod; None (with the reason in its status) when it cannot have one now."""
        blocked = await self._network_blocks(pod)
        if blocked is not None:
            await self._report(pod, None, [container_status(c, None, None, blocked) for c in specs])
            return None
        try:
            sandbox_id = await self._runtime.run_sandbox(config)
        except ContainerRuntimeError as exc:
            log.warning("sandbox_failed", pod=_name(pod), error=str(exc))
            await self._event(pod, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            failed = Waiting("CreatePodSandboxError", str(exc))
            await self._report(pod, None, [container_status(c, None, None, failed) for c in specs])
            return None
        self.stats.sandboxes_started += 1
        log.info("sandbox_started", pod=_name(pod), sandbox=sandbox_id[:12])
        return next((s for s in await self._runtime.list_sandboxes() if s.id == sandbox_id), None)

    async def _network_blocks(self, pod: dict[str, Any]) -> Waiting | None:
        """Why the pod cannot have a sandbox now (no pod network yet), or None."""
        if self._network is None or (pod.get("spec") or {}).get("hostNetwork"):
            return None
        reason = await self._network.not_ready()
        if not reason:
            return None
        await self._event(pod, "Warning", "NetworkNotReady", f"network is not ready: {reason}")
        return Waiting("ContainerCreating", reason)

    async def _volumes(self, pod: dict[str, Any], sandbox: SandboxInfo | None) -> dict[str, Path]:
        uid = pod["metadata"]["uid"]
        status = self._runtime_status(pod, sandbox)
        key = (pod["metadata"].get("resourceVersion"), status["podIP"], status["hostIP"], self._volume_sources)
        now = asyncio.get_running_loop().time()
        done = self._volumes_done.get(uid)
        if done is not None and done[0] == key and now - done[1] < VOLUME_REFRESH_S:
            return done[2]
        pod_dir = self._root / "pods" / uid
        paths = await podvolumes.prepare(pod, pod_dir, self._lookup, self._tokens, status=status)
        hosts = pod_dir / "etc-hosts"
        wanted = podnet.hosts_file(pod, status.get("podIP", ""), self._dns)
        try:
            current: str | None = hosts.read_text()
        except OSError:
            current = None
        if current != wanted:
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(wanted)
        self._volumes_done[uid] = (key, now, paths)
        return paths

    def _runtime_status(self, pod: dict[str, Any], sandbox: SandboxInfo | None) -> dict[str, str]:
        """The pod's IPs as the node knows them (the downward API and /etc/hosts need them)."""
        host_network = bool((pod.get("spec") or {}).get("hostNetwork"))
        pod_ip = self._host_ip if host_network else (sandbox.ip if sandbox is not None else "")
        return {"podIP": pod_ip, "hostIP": self._host_ip}

    async def _sync_container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        *,
        sandbox: SandboxInfo,
        sandbox_config: SandboxConfig,
        history: list[ContainerInfo],
        volumes: dict[str, Path],
        restart: str | None = None,
    ) -> ContainerInfo | Waiting | None:
        """Start or restart the container if it should run: its new state, why it waits, or None (no change).

        ``restart``: the restart policy for this container when it is not the pod's (init containers)."""
        latest = history[-1] if history else None
        name = spec["name"]
        if latest is not None and latest.state is ContainerState.RUNNING:
            target = self._probe_target(pod, spec, sandbox, latest)
            failed = self._prober.ensure(spec, target, time.monotonic(), self._unhealthy(pod, spec)).live_failed
            if not failed:
                return None
            latest = await self._kill_unhealthy(pod, spec, sandbox, latest, failed)
        if latest is not None and latest.state is ContainerState.CREATED:
            await self._runtime.start_container(latest.id)
            return await self._runtime.container_status(latest.id)
        if latest is not None:
            gate = self._may_restart(pod, spec, latest, restart)
            if isinstance(gate, Waiting):
                await self._event(
                    pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {name} in pod {_kubelet_name(pod)}",
                    container=name,
                )
            if gate is not True:
                return gate or None
        return await self._start_container(
            pod,
            spec,
            sandbox=sandbox,
            sandbox_config=sandbox_config,
            history=history,
            volumes=volumes,
        )

    async def _start_container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        *,
        sandbox: SandboxInfo,
        sandbox_config: SandboxConfig,
        history: list[ContainerInfo],
        volumes: dict[str, Path],
    ) -> ContainerInfo | Waiting:
        """A new instance: image, config (security context checked against the image's user), create, start,
        postStart. Why it cannot start is a Waiting reason, as the kubelet reports it."""
        name = spec["name"]
        policy = _pull_policy(spec)
        attempt = (history[-1].attempt + 1) if history else 0
        try:
            image = await self._runtime.ensure_image(spec["image"], policy)
        except ImageError as exc:
            reason = "ErrImageNeverPull" if policy == "Never" else "ImagePullBackOff"
            await self._event(pod, "Warning", reason, str(exc), container=name)
            return Waiting(reason, str(exc))
        try:
            security = podsecurity.container_security(pod, spec, image_uid=image.uid, image_user=image.username)
            config = await self._container_config(
                pod, spec, sandbox, attempt=attempt, volumes=volumes, security=security
            )
        except (podspec.SpecError, podsecurity.SecurityError) as exc:
            await self._event(pod, "Warning", "Failed", f"Error: {exc}", container=name)
            return Waiting("CreateContainerConfigError", str(exc))
        if policy != "Always":
            await self._event(
                pod, "Normal", "Pulled", f'Container image "{spec["image"]}" already present on machine', container=name
            )
        try:
            container_id = await self._runtime.create_container(sandbox.id, config, sandbox_config)
        except ContainerRuntimeError as exc:
            await self._event(pod, "Warning", "Failed", f"Error: {exc}", container=name)
            return Waiting("CreateContainerError", str(exc))
        await self._event(pod, "Normal", "Created", f"Created container: {name}", container=name)
        try:
            await self._runtime.start_container(container_id)
        except ContainerRuntimeError as exc:  # e.g. the command is not in the image: the instance is there, exited
            await self._event(pod, "Warning", "Failed", f"Error: {exc}", container=name)
            log.warning("container_start_failed", pod=_name(pod), container=name, error=str(exc))
        else:
            await self._event(pod, "Normal", "Started", f"Started container {name}", container=name)
        self.stats.containers_started += 1
        for old in history[:-1]:  # keep the last exited instance for lastState, remove older ones
            with contextlib.suppress(ContainerRuntimeError):
                await self._runtime.remove_container(old.id)
        log.info("container_started", pod=_name(pod), container=name, attempt=config.attempt)
        started = await self._runtime.container_status(container_id)
        post_start = (spec.get("lifecycle") or {}).get("postStart")
        if post_start and started.state is ContainerState.RUNNING:
            target = self._probe_target(pod, spec, sandbox, started)
            verdict = await probes.run_action(post_start, target, self._runtime, HOOK_TIMEOUT_S)
            if not verdict.ok:
                message = f"PostStartHook failed: {verdict.message}".strip()
                await self._event(pod, "Warning", "FailedPostStartHook", message, container=name)
                await self._runtime.stop_container(container_id, 0)
                started = await self._runtime.container_status(container_id)
        return started

    async def _kill_unhealthy(
        self, pod: dict[str, Any], spec: dict[str, Any], sandbox: SandboxInfo, info: ContainerInfo, why: str
    ) -> ContainerInfo:
        """A liveness (or startup) probe gave up: stop the container like a deletion would (preStop, grace),
        so the restart policy decides what comes next."""
        name = spec["name"]
        kind = "startup" if why.startswith("Startup") else "liveness"
        await self._event(
            pod, "Normal", "Killing", f"Container {name} failed {kind} probe, will be restarted", container=name
        )
        probe = spec.get(f"{kind}Probe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        await self._stop_container(pod, spec, sandbox, info, int(grace))
        self._prober.forget_one(info.id)
        return await self._runtime.container_status(info.id)

    async def _stop_container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any] | None,
        sandbox: SandboxInfo | None,
        info: ContainerInfo,
        grace: int,
    ) -> None:
        """preStop (within the grace period), then the runtime's stop with what is left of it."""
        started = time.monotonic()
        pre_stop = ((spec or {}).get("lifecycle") or {}).get("preStop")
        if pre_stop and sandbox is not None and spec is not None and grace > 0:
            target = self._probe_target(pod, spec, sandbox, info)
            verdict = await probes.run_action(pre_stop, target, self._runtime, float(grace))
            if not verdict.ok:
                message = f"PreStopHook failed: {verdict.message}".strip()
                await self._event(pod, "Warning", "FailedPreStopHook", message, container=spec["name"])
        left = max(0, grace - int(time.monotonic() - started))
        await self._runtime.stop_container(info.id, left)

    def _may_restart(
        self, pod: dict[str, Any], spec: dict[str, Any], exited: ContainerInfo, policy: str | None = None
    ) -> Waiting | bool:
        """restartPolicy, then CrashLoopBackOff: the first restart is immediate, later ones wait 10 s, 20 s, …"""
        policy = policy or (pod.get("spec") or {}).get("restartPolicy", "Always")
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
        """The pod is being deleted: stop it within its grace period, report how its containers ended (a
        terminal phase: a Job counts on it), then tell the cloud it is gone."""
        uid = pod["metadata"]["uid"]
        if uid in self._deleting_reported:
            return
        grace = int(
            pod["metadata"].get("deletionGracePeriodSeconds")
            or (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        )
        pod_spec = pod.get("spec") or {}
        specs = pod_spec.get("containers") or []
        by_name = {
            c["name"]: c
            for c in [*(pod_spec.get("initContainers") or []), *specs, *(pod_spec.get("ephemeralContainers") or [])]
        }
        containers = [c for s in sandboxes for c in in_sandbox.get(s.id, [])]
        running = [c for c in containers if c.state is ContainerState.RUNNING]
        sandbox = next((s for s in sandboxes if s.state is SandboxState.READY), None)
        for container in running:
            await self._event(
                pod, "Normal", "Killing", f"Stopping container {container.name}", container=container.name
            )
        if running and sandbox is not None:  # not ready while it stops (its endpoints go at once), as the kubelet
            stopping = [self._status(pod, c, next(reversed(_history(containers, c)), None), None, None) for c in specs]
            for status in stopping:
                status["ready"] = False
            await self._report(pod, sandbox, stopping)
        # The app (and debug) containers first, together; then the sidecars, the last declared first, as the
        # kubelet does: a sidecar's preStop may still use the sidecars declared before it.
        sidecars = [c["name"] for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        deadline = time.monotonic() + grace
        await asyncio.gather(
            *(
                self._stop_container(pod, by_name.get(c.name), sandbox, c, grace)
                for c in running
                if c.name not in sidecars
            )
        )
        for name in reversed(sidecars):
            for container in (c for c in running if c.name == name):
                left = max(0, int(deadline - time.monotonic()))
                await self._stop_container(pod, by_name.get(name), sandbox, container, left)
        final = []
        for spec in specs:
            mine = _history(containers, spec)
            latest = None
            if mine:
                with contextlib.suppress(ContainerRuntimeError):
                    latest = await self._runtime.container_status(mine[-1].id)
            final.append(self._status(pod, spec, latest, None, None))
        if final and all("terminated" in s["state"] for s in final):
            await self._report({**pod, "spec": {**pod["spec"], "restartPolicy": "Never"}}, None, final)
        await self._remove_pod(uid, sandboxes, in_sandbox, 0)
        self._deleting_reported.add(uid)
        namespace, name = pod["metadata"].get("namespace", "default"), pod["metadata"]["name"]
        await self._publish(upstream.pod_deleted(namespace, name, uid))

    async def _remove_pod(
        self, uid: str, sandboxes: list[SandboxInfo], in_sandbox: dict[str, list[ContainerInfo]], grace_s: int
    ) -> None:
        for sandbox in sandboxes:
            await self._remove_sandbox(sandbox, in_sandbox.get(sandbox.id, []), grace_s=grace_s)
        podvolumes.release(self._root / "pods" / uid)
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

    def _sandbox_config(
        self, pod: dict[str, Any], *, attempt: int, security: podsecurity.SandboxSecurity, new: bool
    ) -> SandboxConfig:
        """The configuration of the pod's sandbox: built afresh for a ``new`` one (with ``attempt``), else the one
        its sandbox was made with while the pod is unchanged."""
        m, spec = pod["metadata"], pod.get("spec") or {}
        version = str(m.get("resourceVersion") or "")
        kept = self._sandbox_configs.get(m["uid"])
        if not new and version and kept is not None and kept[0] == version:
            return kept[1]
        host_network = bool(spec.get("hostNetwork"))
        log_dir = self._log_dir(pod)
        log_dir.mkdir(parents=True, exist_ok=True)
        config = SandboxConfig(
            name=m["name"],
            namespace=m.get("namespace", "default"),
            uid=m["uid"],
            attempt=attempt,
            hostname="" if host_network else podnet.hostname(pod, self._dns.cluster_domain),
            host_network=host_network,
            log_directory=str(log_dir),
            cgroup_parent=f"/kubepods/pod{m['uid']}",
            labels={
                POD_NAME: m["name"],
                POD_NAMESPACE: m.get("namespace", "default"),
                POD_UID: m["uid"],
                NODE_NAME: self.node_name,
            },
            port_mappings=_port_mappings(spec),
            dns=podnet.dns_config(pod, self._dns),
            security=security,
        )
        self._sandbox_configs[m["uid"]] = (version, config)
        return config

    async def _container_config(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        sandbox: SandboxInfo,
        *,
        attempt: int,
        volumes: dict[str, Path],
        security: podsecurity.ContainerSecurity,
    ) -> ContainerConfig:
        m = pod["metadata"]
        status = self._runtime_status(pod, sandbox)
        env = await podspec.environment(pod, spec, self._lookup, status=status, base=self._service_env)
        mounts = podspec.mounts(spec, volumes, env)
        pod_dir = self._root / "pods" / m["uid"]
        if not any(mount.container_path == "/etc/hosts" for mount in mounts):  # the kubelet's managed /etc/hosts
            mounts.append(Mount(str(pod_dir / "etc-hosts"), "/etc/hosts"))
        message_file, message_path = podtermination.prepare(pod_dir, spec, attempt)
        mounts.append(Mount(str(message_file), message_path))
        return ContainerConfig(
            name=spec["name"],
            image=spec["image"],
            command=[podspec.expand(c, env) for c in spec.get("command") or []],
            args=[podspec.expand(a, env) for a in spec.get("args") or []],
            env=env,
            working_dir=spec.get("workingDir", ""),
            mounts=mounts,
            log_path=f"{spec['name']}/{attempt}.log",
            attempt=attempt,
            resources=podspec.resources(spec),
            labels={
                POD_NAME: m["name"],
                POD_NAMESPACE: m.get("namespace", "default"),
                POD_UID: m["uid"],
                CONTAINER_NAME: spec["name"],
            },
            security=security,
            stdin=bool(spec.get("stdin")),
            stdin_once=bool(spec.get("stdinOnce")),
            tty=bool(spec.get("tty")),
        )

    async def _lookup(self, kind: str, namespace: str, name: str) -> Any:
        return await self._store.get(kind, namespace, name)

    async def _event(self, pod: dict[str, Any], type_: str, reason: str, message: str, container: str = "") -> None:
        if self._events is not None:
            await self._events.pod(pod, type_, reason, message, container=container)

    # --- status ------------------------------------------------------------------------------------------

    async def _report(
        self,
        pod: dict[str, Any],
        sandbox: SandboxInfo | None,
        containers: list[dict[str, Any]],
        *,
        waiting_on: str = "",
        init: Init | None = None,
        terminal: Terminal | None = None,
        ephemeral: list[dict[str, Any]] | None = None,
    ) -> None:
        m = pod["metadata"]
        status = pod_status(
            pod,
            sandbox,
            containers,
            host_ip=self._host_ip,
            now=_now(),
            waiting_on=waiting_on,
            init=init,
            terminal=terminal,
        )
        if ephemeral:
            status["ephemeralContainerStatuses"] = ephemeral
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


def _port_mappings(spec: dict[str, Any]) -> tuple[PortMapping, ...]:
    """Every container port with a hostPort, for the CNI portmap plugin (host-network pods need none)."""
    if spec.get("hostNetwork"):
        return ()
    return tuple(
        PortMapping(
            container_port=int(port["containerPort"]),
            host_port=int(port["hostPort"]),
            protocol=str(port.get("protocol") or "TCP"),
            host_ip=str(port.get("hostIP") or ""),
        )
        for container in spec.get("containers") or []
        for port in container.get("ports") or []
        if port.get("hostPort")
    )


def _history(containers: list[ContainerInfo], spec: dict[str, Any]) -> list[ContainerInfo]:
    """The instances of one container of the pod, oldest first."""
    return sorted((c for c in containers if c.name == spec["name"]), key=lambda c: (c.attempt, c.created_at_ns))


def _kind(resource: str) -> str:
    """The type in a ``<namespace>/<type>/<name>`` resource."""
    parts = resource.split("/", 2)
    return parts[1] if len(parts) == 3 else ""


def _kubelet_name(pod: dict[str, Any]) -> str:
    m = pod["metadata"]
    return f"{m['name']}_{m.get('namespace', 'default')}({m['uid']})"


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
