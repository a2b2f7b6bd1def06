"""Probes and lifecycle hooks: the kubelet's exec, httpGet, tcpSocket, grpc and sleep actions, and the
per-container workers that run liveness, readiness and startup probes on their timings.

``run_action`` performs one action against one container and says whether it succeeded (and why not);
``Prober`` keeps one asyncio task per probe of each running container and the latest verdicts, and calls
``on_change`` when one flips, so Edged's level-triggered loop looks at the pod again. Verdicts live in memory:
after an EdgeCore restart, probes start again from their initial delay, as they do after a kubelet restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import wrappers_pb2
from google.protobuf.message import DecodeError

from common.logging import get_logger
from edgecore.edged.grpc_unary import RpcError, UnaryChannel
from edgecore.edged.runtime import ExecResult

log = get_logger(__name__)

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")
MAX_OUTPUT = 10 * 1024  # bytes of a failed probe's output kept in its message, as the kubelet does


class Execer(Protocol):
    async def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int) -> ExecResult: ...


@dataclass(frozen=True)
class Target:
    """Where a container's probes and hooks go: its id (exec) and its pod's address (http, tcp, grpc)."""

    container_id: str
    pod_ip: str
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str = ""
    warning: str = ""  # a success worth an event (a redirect to another host, not followed)


def _port(value: Any, target: Target) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    if value in target.ports:
        return target.ports[value]
    raise ValueError(f"port {value!r} is not a number nor a named port of the container")


async def run_action(action: dict[str, Any], target: Target, runtime: Execer, timeout_s: float) -> Verdict:
    """One probe or hook action; never raises (a failure is a Verdict with the reason)."""
    kind = next((k for k in _HANDLERS if k in action), None)
    if kind is None:
        return Verdict(False, "the action names no handler (exec, httpGet, tcpSocket, grpc or sleep)")
    try:
        return await _HANDLERS[kind](action[kind] or {}, target, runtime, timeout_s)
    except TimeoutError:
        return Verdict(False, f"timed out after {timeout_s:g}s")
    except Exception as exc:  # refused, reset, no such port, the runtime's exec failing (container gone): a failure
        return Verdict(False, str(exc) or type(exc).__name__)


async def _exec(spec: dict[str, Any], target: Target, runtime: Execer, timeout_s: float) -> Verdict:
    command = [str(c) for c in spec.get("command") or []]
    result = await runtime.exec_sync(target.container_id, command, max(1, int(timeout_s)))
    output = (result.stdout + result.stderr)[:MAX_OUTPUT].decode(errors="replace")
    if result.exit_code != 0:
        return Verdict(False, output or f"command {command} exited with {result.exit_code}")
    return Verdict(True, output)


async def _tcp(spec: dict[str, Any], target: Target, _: Execer, timeout_s: float) -> Verdict:
    host = spec.get("host") or target.pod_ip
    async with asyncio.timeout(timeout_s):
        _reader, writer = await asyncio.open_connection(host, _port(spec.get("port"), target))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Verdict(True)


async def _sleep(spec: dict[str, Any], _target: Target, _runtime: Execer, _timeout_s: float) -> Verdict:
    await asyncio.sleep(float(spec.get("seconds", 0)))
    return Verdict(True)


MAX_REDIRECTS = 10


async def _http_get(spec: dict[str, Any], target: Target, _: Execer, timeout_s: float) -> Verdict:
    """GET; 200-399 is a success. Redirects are followed only to the same host, as the kubelet does: a redirect
    elsewhere is itself the answer (a success, with a warning), never a request to another host."""
    scheme = str(spec.get("scheme") or "HTTP").lower()
    host = str(spec.get("host") or target.pod_ip)
    port = _port(spec.get("port"), target)
    path = str(spec.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"User-Agent": "kube-probe/1.36", "Accept": "*/*"}
    for header in spec.get("httpHeaders") or []:
        headers[str(header.get("name"))] = str(header.get("value", ""))
    host_part = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{host_part}:{port}{path}"
    async with asyncio.timeout(timeout_s):
        for _hop in range(MAX_REDIRECTS + 1):
            status, location, body = await _get_once(url, headers)
            if 300 <= status < 400 and location:
                following = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(following).hostname == urllib.parse.urlsplit(url).hostname:
                    url = following
                    continue
                return Verdict(True, body, warning=f"Probe terminated redirects, Response body: {body}")
            if 200 <= status < 400:
                return Verdict(True, body)
            return Verdict(False, f"HTTP probe failed with statuscode: {status}")
    return Verdict(False, f"stopped after {MAX_REDIRECTS} redirects")


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify a probe's certificate either
    return context


async def _get_once(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """One HTTP/1.1 GET on its own connection: status, Location, the start of the body. (Plain asyncio streams:
    a probe needs no more, and an HTTP client library would cost EdgeCore megabytes of memory.)"""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port, ssl=_insecure_context() if https else None
    )
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").split(" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ValueError(f"not an HTTP response: {' '.join(status_line).strip()!r}")
        found: dict[str, str] = {}
        while (line := (await reader.readline()).decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            found[name.strip().lower()] = value.strip()
        length = int(found["content-length"]) if found.get("content-length", "").isdigit() else MAX_OUTPUT
        try:
            body = await reader.readexactly(min(length, MAX_OUTPUT))
        except asyncio.IncompleteReadError as short:  # no Content-Length: the body ends with the connection
            body = short.partial
        return int(status_line[1]), found.get("location", ""), body.decode(errors="replace")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


# grpc.health.v1's HealthCheckRequest {string service = 1} and HealthCheckResponse {ServingStatus status = 1} are,
# on the wire, protobuf's StringValue and Int32Value: no generated code needed for two one-field messages.
_SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


async def _grpc_health(spec: dict[str, Any], target: Target, _: Execer, timeout_s: float) -> Verdict:
    port = _port(spec.get("port"), target)
    request = wrappers_pb2.StringValue(value=str(spec.get("service") or "")).SerializeToString()
    try:
        # the pod's server is not trusted with more than grpc-go's default limit, as the kubelet's probe has it
        async with UnaryChannel(f"{target.pod_ip}:{port}", max_message=4 * 1024 * 1024) as channel:
            reply = await channel.call("/grpc.health.v1.Health/Check", request, deadline_s=timeout_s)
        status = wrappers_pb2.Int32Value.FromString(reply).value
    except RpcError as exc:
        return Verdict(False, f"the health check failed: {exc}")
    except DecodeError as exc:
        return Verdict(False, f"the health check's answer is not a HealthCheckResponse: {exc}")
    if status == 1:
        return Verdict(True)
    name = _SERVING_STATUS[status] if 0 <= status < len(_SERVING_STATUS) else str(status)
    return Verdict(False, f'service unhealthy (responded with "{name}")')


EventSink = Callable[[str, str, str], Awaitable[None]]  # (type, reason, message) → a Kubernetes event

_HANDLERS: dict[str, Callable[[dict[str, Any], Target, Execer, float], Awaitable[Verdict]]] = {
    "exec": _exec,
    "httpGet": _http_get,
    "tcpSocket": _tcp,
    "grpc": _grpc_health,
    "sleep": _sleep,
}


# --- probe workers -----------------------------------------------------------------------------------------


@dataclass
class _State:
    """One container's verdicts: what Edged reads each round."""

    started: bool  # the startup probe succeeded (or there is none)
    ready: bool = False
    started_event: asyncio.Event = field(default_factory=asyncio.Event)
    live_failed: str = ""  # liveness (or startup) gave up: the reason; Edged restarts the container
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    started: bool
    ready: bool
    live_failed: str = ""


class Prober:
    """Runs each running container's probes; ``ensure`` says what they last found."""

    def __init__(self, runtime: Execer, on_change: Callable[[], None]) -> None:
        self._runtime = runtime
        self._on_change = on_change
        self._states: dict[str, _State] = {}

    def ensure(
        self,
        container: dict[str, Any],
        target: Target,
        started_at: float,
        unhealthy: EventSink | None = None,
    ) -> Result:
        """Start the container's probes if they are not running; its verdicts so far.

        ``unhealthy(type, reason, message)`` records the kubelet's events: Unhealthy for each failed probe,
        ProbeWarning for a success with a warning."""
        state = self._states.get(target.container_id)
        if state is None:
            has_startup = bool(container.get("startupProbe"))
            # Without a readiness probe a container is ready once started.
            state = _State(started=not has_startup, ready=not container.get("readinessProbe"))
            if state.started:
                state.started_event.set()
            self._states[target.container_id] = state
            for kind in KINDS:
                if container.get(kind):
                    state.tasks.append(
                        asyncio.create_task(
                            self._run(kind, container[kind], target, state, started_at=started_at, unhealthy=unhealthy),
                            name=f"probe {kind} {target.container_id[:12]}",
                        )
                    )
        return Result(state.started, state.ready and state.started, state.live_failed)

    def forget_one(self, container_id: str) -> None:
        self.forget(set(self._states) - {container_id})

    def forget(self, keep: set[str]) -> None:
        """Stop the probes of every container not in ``keep`` (exited, removed, restarted)."""
        for container_id in [c for c in self._states if c not in keep]:
            for task in self._states.pop(container_id).tasks:
                task.cancel()

    async def close(self) -> None:
        tasks = [t for s in self._states.values() for t in s.tasks]
        self._states.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self,
        kind: str,
        probe: dict[str, Any],
        target: Target,
        state: _State,
        *,
        started_at: float,
        unhealthy: EventSink | None,
    ) -> None:
        period = max(1, int(probe.get("periodSeconds") or 10))
        timeout_s = max(1, int(probe.get("timeoutSeconds") or 1))
        success_needed = max(1, int(probe.get("successThreshold") or 1))
        failures_allowed = max(1, int(probe.get("failureThreshold") or 3))
        delay = float(probe.get("initialDelaySeconds") or 0) - (time.monotonic() - started_at)
        if kind != "startupProbe":
            await state.started_event.wait()  # liveness and readiness wait for the startup probe
        if delay > 0:
            await asyncio.sleep(delay)
        successes = failures = 0
        while True:
            verdict = await run_action(probe, target, self._runtime, timeout_s)
            what = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}[kind]
            if verdict.ok:
                successes, failures = successes + 1, 0
                if verdict.warning and unhealthy is not None:
                    await unhealthy("Warning", "ProbeWarning", f"{what} probe warning: {verdict.warning}")
            else:
                successes, failures = 0, failures + 1
                if unhealthy is not None:
                    await unhealthy("Warning", "Unhealthy", f"{what} probe failed: {verdict.message}".strip())
            changed = self._apply(kind, state, verdict, successes >= success_needed, failures >= failures_allowed)
            if changed:
                self._on_change()
            if kind == "startupProbe" and state.started:
                return  # done: liveness and readiness take over
            if state.live_failed:
                return  # the container is going to be restarted; its successor gets new probes
            await asyncio.sleep(period)

    @staticmethod
    def _apply(kind: str, state: _State, verdict: Verdict, succeeded: bool, failed: bool) -> bool:
        if kind == "readinessProbe":
            ready = state.ready
            if succeeded:
                state.ready = True
            elif failed:
                state.ready = False
            return state.ready != ready
        if kind == "startupProbe" and succeeded:
            state.started = True
            state.started_event.set()
            return True
        if failed and not state.live_failed:
            what = "Startup" if kind == "startupProbe" else "Liveness"
            state.live_failed = f"{what} probe failed: {verdict.message}".strip()
            return True
        return False
