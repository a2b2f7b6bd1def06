"""A pod's status from what the runtime reports, computed the way the kubelet does."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from edgecore.edged.runtime import ContainerInfo, ContainerState, SandboxInfo


def rfc3339(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Waiting:
    """Why a container is not running (yet): ContainerCreating, CrashLoopBackOff, ErrImageNeverPull, ..."""

    reason: str
    message: str = ""


def container_status(
    spec: dict[str, Any],
    latest: ContainerInfo | None,
    previous: ContainerInfo | None,
    waiting: Waiting | None,
    *,
    ready: bool = True,
    started: bool = True,
) -> dict[str, Any]:
    """``ready``/``started``: what the container's readiness and startup probes say while it runs.

    ``lastState`` is the instance before the one in ``state``: with ``waiting`` (a restart to come) that is
    ``latest`` itself when it has exited, not an older one."""
    status: dict[str, Any] = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": latest.image_id if latest is not None else "",
        "ready": False,
        "restartCount": latest.attempt if latest is not None else 0,
        "started": False,
        "state": {},
        "lastState": {},
    }
    if latest is not None:
        status["containerID"] = f"containerd://{latest.id}"
    if waiting is not None and latest is not None and latest.state is ContainerState.EXITED:
        previous = latest
    if previous is not None and previous.state is ContainerState.EXITED:
        status["lastState"] = {"terminated": _terminated(previous)}
    if waiting is not None:
        status["state"] = {
            "waiting": {"reason": waiting.reason, **({"message": waiting.message} if waiting.message else {})}
        }
    elif latest is None or latest.state is ContainerState.CREATED:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    elif latest.state is ContainerState.RUNNING:
        status["state"] = {"running": {"startedAt": rfc3339(latest.started_at_ns)}}
        status["started"] = started
        status["ready"] = ready and started
    elif latest.state is ContainerState.EXITED:
        status["state"] = {"terminated": _terminated(latest)}
    else:
        status["state"] = {"waiting": {"reason": "Unknown"}}
    return status


def _terminated(info: ContainerInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": info.exit_code,
        "reason": info.reason or ("Completed" if info.exit_code == 0 else "Error"),
        "containerID": f"containerd://{info.id}",
    }
    if info.started_at_ns:
        out["startedAt"] = rfc3339(info.started_at_ns)
    if info.finished_at_ns:
        out["finishedAt"] = rfc3339(info.finished_at_ns)
    if info.message:
        out["message"] = info.message
    return out


def phase(restart_policy: str, statuses: list[dict[str, Any]]) -> str:
    states = [s["state"] for s in statuses]
    if any("running" in s for s in states):
        return "Running"
    if any("waiting" in s for s in states):
        # waiting after having run once means a restart is coming
        return "Running" if any(s["lastState"] for s in statuses) else "Pending"
    if not states:
        return "Pending"
    codes = [s["terminated"]["exitCode"] for s in states]
    if restart_policy == "Always":
        return "Running"
    if all(code == 0 for code in codes):
        return "Succeeded"
    return "Running" if restart_policy == "OnFailure" else "Failed"


@dataclass(frozen=True)
class Init:
    """Where the pod's init containers are: their statuses, whether all are done, whether one failed for good."""

    statuses: list[dict[str, Any]]
    done: bool = True
    failed: bool = False  # restartPolicy Never and an init container failed: the pod fails


@dataclass(frozen=True)
class Terminal:
    """The pod ended on the node's decision (a deadline, an admission refusal): phase Failed with a reason."""

    reason: str
    message: str


def pod_status(
    pod: dict[str, Any],
    sandbox: SandboxInfo | None,
    containers: list[dict[str, Any]],
    *,
    host_ip: str,
    now: str,
    waiting_on: str = "",
    init: Init | None = None,
    terminal: Terminal | None = None,
) -> dict[str, Any]:
    """``waiting_on``: why the pod cannot start its containers (a volume the edge cannot provide, say)."""
    spec = pod.get("spec") or {}
    init = init or Init([])
    current_phase = phase(spec.get("restartPolicy", "Always"), containers)
    if not init.done:
        current_phase = "Failed" if init.failed else "Pending"
    if terminal is not None:
        current_phase = "Failed"
    sidecars = [s for s, c in zip(init.statuses, spec.get("initContainers") or [], strict=False) if _restartable(c)]
    containers_ready = init.done and bool(containers) and all(c["ready"] for c in [*containers, *sidecars])
    unready = [c["name"] for c in [*sidecars, *containers] if not c["ready"]]
    not_ready = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{' '.join(unready)}]"}
    if current_phase in ("Succeeded", "Failed"):
        not_ready = {"reason": "PodCompleted", "message": ""}
    gate = _unmet_readiness_gate(pod)
    ready = containers_ready and gate is None
    pod_not_ready = (
        not_ready if not containers_ready or gate is None else {"reason": "ReadinessGatesNotReady", "message": gate}
    )
    sandbox_ready: dict[str, str] = {"status": str(sandbox is not None)}
    if waiting_on:
        sandbox_ready = {"status": "False", "reason": "VolumesNotReady", "message": waiting_on}
    initialized: dict[str, str] = {"status": "True"}
    if not init.done:
        specs = {c.get("name"): c for c in spec.get("initContainers") or []}
        incomplete = [
            s["name"]
            for s in init.statuses
            if (not s.get("started") if _restartable(specs.get(s["name"], {})) else not _completed(s))
        ]
        initialized = {
            "status": "False",
            "reason": "ContainersNotInitialized",
            "message": f"containers with incomplete status: [{' '.join(incomplete)}]",
        }
    status: dict[str, Any] = {
        "phase": current_phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "conditions": [
            {"type": "PodReadyToStartContainers", **sandbox_ready, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", **initialized, "lastTransitionTime": now},
            {
                "type": "ContainersReady",
                "status": str(containers_ready),
                **({} if containers_ready else not_ready),
                "lastTransitionTime": now,
            },
            {"type": "Ready", "status": str(ready), **({} if ready else pod_not_ready), "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
        "qosClass": _qos(spec),
    }
    if init.statuses:
        status["initContainerStatuses"] = init.statuses
    if terminal is not None:
        status["reason"], status["message"] = terminal.reason, terminal.message
    if sandbox is not None:
        status["startTime"] = rfc3339(sandbox.created_at_ns)
        ip = host_ip if spec.get("hostNetwork") else sandbox.ip
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
    return status


def _unmet_readiness_gate(pod: dict[str, Any]) -> str | None:
    """Why a ``readinessGates`` condition (set by someone else on the pod's status) keeps the pod not Ready."""
    present = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = gate.get("conditionType", "")
        if kind not in present:
            return f'corresponding condition of pod readiness gate "{kind}" does not exist.'
        if present[kind] != "True":
            return f'the status of pod readiness gate "{kind}" is not "True", but {present[kind]}'
    return None


def _completed(status: dict[str, Any]) -> bool:
    return bool(status["state"].get("terminated", {}).get("exitCode") == 0)


def _restartable(container: dict[str, Any]) -> bool:
    """A sidecar: an init container with ``restartPolicy: Always``, which keeps running beside the others."""
    return container.get("restartPolicy") == "Always"


def _qos(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k)
        and (r.get("requests") or r.get("limits") or {}).get(k) == (r.get("limits") or {}).get(k)
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"
