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
    spec: dict[str, Any], latest: ContainerInfo | None, previous: ContainerInfo | None, waiting: Waiting | None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "ready": False,
        "restartCount": latest.attempt if latest is not None else 0,
        "started": False,
        "state": {},
        "lastState": {},
    }
    if latest is not None:
        status["containerID"] = f"containerd://{latest.id}"
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
        status["ready"] = status["started"] = True
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


def pod_status(
    pod: dict[str, Any],
    sandbox: SandboxInfo | None,
    containers: list[dict[str, Any]],
    *,
    host_ip: str,
    now: str,
    waiting_on: str = "",
) -> dict[str, Any]:
    """``waiting_on``: why the pod cannot start its containers (a volume the edge cannot provide, say)."""
    spec = pod.get("spec") or {}
    current_phase = phase(spec.get("restartPolicy", "Always"), containers)
    ready = bool(containers) and all(c["ready"] for c in containers)
    unready = [c["name"] for c in containers if not c["ready"]]
    not_ready = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{' '.join(unready)}]"}
    if current_phase in ("Succeeded", "Failed"):
        not_ready = {"reason": "PodCompleted", "message": ""}
    sandbox_ready: dict[str, str] = {"status": str(sandbox is not None)}
    if waiting_on:
        sandbox_ready = {"status": "False", "reason": "VolumesNotReady", "message": waiting_on}
    status: dict[str, Any] = {
        "phase": current_phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "conditions": [
            {"type": "PodReadyToStartContainers", **sandbox_ready, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {
                "type": "ContainersReady",
                "status": str(ready),
                **({} if ready else not_ready),
                "lastTransitionTime": now,
            },
            {"type": "Ready", "status": str(ready), **({} if ready else not_ready), "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
        "qosClass": _qos(spec),
    }
    if sandbox is not None:
        status["startTime"] = rfc3339(sandbox.created_at_ns)
        ip = host_ip if spec.get("hostNetwork") else sandbox.ip
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
    return status


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
