"""The kubelet's HTTP API, as much of it as the API server and metrics-server use, served on one stream.

``serve(head, pipe)`` answers one request: container logs from the CRI log files; exec, attach and
port-forward by asking the runtime (CRI ``Exec``/``Attach``/``PortForward``) for its streaming URL and relaying
the API server's upgraded connection to it byte for byte (SPDY or WebSocket, whatever the two negotiate); and
the node endpoints ``/healthz``, ``/pods``, ``/stats/summary`` and ``/metrics/resource``. A pod must be in this
node's store and bound to this node, or the answer is 404: a stream never reaches another node's pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from common import httphead
from common.httphead import RequestHead
from common.logging import get_logger
from common.streams import Pipe, StreamError, relay
from edgecore.edged.logs import LogError, LogOptions, stream_log
from edgecore.edged.runtime import (
    CONTAINER_NAME,
    POD_UID,
    ContainerInfo,
    ContainerRuntimeError,
    ContainerState,
    SandboxState,
    StreamingRuntime,
)
from edgecore.edgestream import stats

log = get_logger(__name__)


class PodStore(Protocol):
    async def list_kind(self, kind: str) -> list[Any]: ...
    async def get(self, kind: str, namespace: str | None, name: str) -> Any: ...


class Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _flag(head: RequestHead, *names: str) -> bool:
    return any(head.param(name) in ("1", "true") for name in names)


class KubeletApi:
    def __init__(
        self,
        *,
        node_name: str,
        store: PodStore,
        runtime: StreamingRuntime,
        log_root: Path,
        pod_statuses: stats.StatusSource,
        bytes_per_s: float = 0,
        sedna: Callable[[RequestHead, Pipe], Awaitable[None]] | None = None,
    ) -> None:
        self.node_name = node_name
        self._sedna = sedna  # the local controller's routes for CloudCore (federated learning)
        self._store = store
        self._runtime = runtime
        self._log_root = log_root
        self._bytes_per_s = bytes_per_s  # each exec/attach/port-forward stream, each way (0: unpaced)
        self._stats = stats.Stats(node_name=node_name, store=store, runtime=runtime, pod_statuses=pod_statuses)

    async def serve(self, head: RequestHead, pipe: Pipe) -> None:
        try:
            await self._route(head, pipe)
        except Refusal as exc:
            log.info("stream_refused", path=head.path, status=exc.status, reason=str(exc))
            await pipe.write(httphead.response(exc.status, str(exc) + "\n"))
        except ContainerRuntimeError as exc:
            log.warning("stream_runtime_error", path=head.path, error=str(exc))
            await pipe.write(httphead.response(500, f"container runtime: {exc}\n"))

    async def _route(self, head: RequestHead, pipe: Pipe) -> None:
        parts = [unquote(p) for p in head.path.split("/") if p]
        match parts:
            case ["healthz"]:
                await pipe.write(httphead.response(200, "ok"))
            case ["pods"]:
                await self._json(pipe, await self._stats.pod_list())
            case ["stats", "summary"]:
                await self._json(pipe, await self._stats.summary())
            case ["metrics", "resource"]:
                body = await self._stats.resource_metrics()
                await pipe.write(httphead.response(200, body, content_type="text/plain; version=0.0.4"))
            case ["containerLogs", namespace, pod, container]:
                await self._logs(head, pipe, namespace, pod, container)
            case ["exec", namespace, pod, container] | ["exec", namespace, pod, _, container]:
                await self._exec(head, pipe, namespace, pod, container)
            case ["attach", namespace, pod, container] | ["attach", namespace, pod, _, container]:
                await self._attach(head, pipe, namespace, pod, container)
            case ["portForward", namespace, pod] | ["portForward", namespace, pod, _]:
                await self._port_forward(head, pipe, namespace, pod)
            case ["sedna", *_] if self._sedna is not None:
                await self._sedna(head, pipe)
            case _:
                raise Refusal(404, f"{head.path} is not served by kubage's Edged")

    async def _json(self, pipe: Pipe, value: Any) -> None:
        await pipe.write(httphead.response(200, orjson.dumps(value).decode(), content_type="application/json"))

    # --- pods and containers -----------------------------------------------------------------------------

    async def _pod(self, namespace: str, name: str) -> dict[str, Any]:
        pod = await self._store.get("pod", namespace, name)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node_name:
            raise Refusal(404, f'pods "{name}" not found on node {self.node_name}')
        return dict(pod)

    async def _containers(self, pod: dict[str, Any], container: str) -> list[ContainerInfo]:
        """The container's instances in this pod, oldest first; Refusal if the pod has no such container."""
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        names += [c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or []]
        names += [c.get("name") for c in (pod.get("spec") or {}).get("ephemeralContainers") or []]
        if container not in names:
            raise Refusal(400, f"container {container} is not valid for pod {pod['metadata']['name']}")
        uid = pod["metadata"]["uid"]
        found = [
            c
            for c in await self._runtime.list_containers()
            if c.labels.get(POD_UID) == uid and c.labels.get(CONTAINER_NAME) == container
        ]
        return sorted(found, key=lambda c: (c.attempt, c.created_at_ns))

    async def _running(self, pod: dict[str, Any], container: str) -> ContainerInfo:
        instances = await self._containers(pod, container)
        if not instances or instances[-1].state is not ContainerState.RUNNING:
            name = pod["metadata"]["name"]
            raise Refusal(400, f"container {container} is not running in pod {name} (or has not started yet)")
        return instances[-1]

    # --- logs --------------------------------------------------------------------------------------------

    async def _logs(self, head: RequestHead, pipe: Pipe, namespace: str, name: str, container: str) -> None:
        pod = await self._pod(namespace, name)
        instances = await self._containers(pod, container)
        try:
            options = LogOptions.from_query(head.query, now_ns=time.time_ns())
        except LogError as exc:
            raise Refusal(400, str(exc)) from None
        previous = _flag(head, "previous")
        if previous and len(instances) < 2:
            raise Refusal(400, f'previous terminated container "{container}" in pod "{name}" not found')
        if not instances:
            raise Refusal(400, f'container "{container}" in pod "{name}" is waiting to start')
        chosen = instances[-2] if previous else instances[-1]
        path = Path(chosen.log_path) if chosen.log_path else self._log_path(pod, container, chosen.attempt)

        async def running() -> bool:
            if previous:
                return False
            try:
                return (await self._runtime.container_status(chosen.id)).state is ContainerState.RUNNING
            except ContainerRuntimeError:
                return False

        chunks = stream_log(path, options, running=running)
        try:
            first = await anext(chunks, b"")
        except LogError as exc:
            raise Refusal(404, str(exc)) from None
        await pipe.write(httphead.streaming_response_head())
        if first:
            await pipe.write(first)
        async for chunk in chunks:
            await pipe.write(chunk)
        await pipe.write_eof()

    def _log_path(self, pod: dict[str, Any], container: str, attempt: int) -> Path:
        m = pod["metadata"]
        return self._log_root / f"{m.get('namespace', 'default')}_{m['name']}_{m['uid']}" / container / f"{attempt}.log"

    # --- exec, attach, port-forward ----------------------------------------------------------------------

    async def _exec(self, head: RequestHead, pipe: Pipe, namespace: str, name: str, container: str) -> None:
        command = head.query.get("command") or []
        if not command:
            raise Refusal(400, "exec needs a command")
        target = await self._running(await self._pod(namespace, name), container)
        url = await self._runtime.exec_url(
            target.id,
            command,
            tty=_flag(head, "tty"),
            stdin=_flag(head, "input", "stdin"),
            stdout=_flag(head, "output", "stdout"),
            stderr=_flag(head, "error", "stderr"),
        )
        await self._relay_to(url, head, pipe)

    async def _attach(self, head: RequestHead, pipe: Pipe, namespace: str, name: str, container: str) -> None:
        target = await self._running(await self._pod(namespace, name), container)
        url = await self._runtime.attach_url(
            target.id,
            tty=_flag(head, "tty"),
            stdin=_flag(head, "input", "stdin"),
            stdout=_flag(head, "output", "stdout"),
            stderr=_flag(head, "error", "stderr"),
        )
        await self._relay_to(url, head, pipe)

    async def _port_forward(self, head: RequestHead, pipe: Pipe, namespace: str, name: str) -> None:
        pod = await self._pod(namespace, name)
        uid = pod["metadata"]["uid"]
        sandboxes = [
            s
            for s in await self._runtime.list_sandboxes()
            if s.labels.get(POD_UID) == uid and s.state is SandboxState.READY
        ]
        if not sandboxes:
            raise Refusal(400, f"pod {name} has no running sandbox to forward ports into")
        try:
            ports = [int(p) for p in head.query.get("port") or []]
        except ValueError:
            raise Refusal(400, "port must be a number") from None
        url = await self._runtime.port_forward_url(max(sandboxes, key=lambda s: s.created_at_ns).id, ports)
        await self._relay_to(url, head, pipe)

    async def _relay_to(self, url: str, head: RequestHead, pipe: Pipe) -> None:
        """Pass the API server's request on to the runtime's streaming server and relay both ways."""
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise Refusal(502, f"the runtime's streaming URL {url!r} is not http://host:port/…")
        port = parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        forwarded = (
            head.with_target(target).with_header("Host", f"{parts.hostname}:{port}").without_header("Authorization")
        )
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, port)
        except OSError as exc:
            raise Refusal(502, f"cannot reach the runtime's streaming server at {parts.netloc}: {exc}") from None
        writer.write(forwarded.encode())
        try:
            await relay(pipe, reader, writer, bytes_per_s=self._bytes_per_s)
        except StreamError as exc:
            log.warning("stream_broken", reason=str(exc))
