"""A FederatedLearningJob's status, from what the cluster and the aggregator say (pure: no I/O).

Sources, most final first: the aggregator container's termination message (its outcome, kept in the pod's
status by Kubernetes, so it survives any CloudCore restart); the Training Operator giving up on the job's
workers (its backoff limit reached); the aggregator's latest report (round and history, relayed by its node's
local controller); the job's pods, and the operator's job running the trainers (``status.trainingJob``).
The phase only moves forward: Pending → Running → Succeeded or Failed.
"""

from __future__ import annotations

import json
from typing import Any

from cloudcore.globalmanager.pods import AGGREGATOR, TYPE_LABEL

HISTORY = 100
FINAL = ("Succeeded", "Failed")


def _aggregator_summary(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    for pod in pods:
        if (pod["metadata"].get("labels") or {}).get(TYPE_LABEL) != AGGREGATOR:
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") == 0 and terminated.get("message"):
                try:
                    summary = json.loads(terminated["message"])
                except ValueError:
                    continue
                if isinstance(summary, dict) and summary.get("phase") in FINAL:
                    return summary
    return None


def _counts(pods: list[dict[str, Any]]) -> tuple[int, int, int]:
    phases = [(p.get("status") or {}).get("phase") for p in pods if not p["metadata"].get("deletionTimestamp")]
    return (
        sum(1 for ph in phases if ph in ("Pending", "Running", None)),
        phases.count("Succeeded"),
        phases.count("Failed"),
    )


def _condition(old: list[dict[str, Any]], type_: str, reason: str, message: str, now: str) -> list[dict[str, Any]]:
    kept = [c for c in old if c.get("type") != type_]
    before = next((c for c in old if c.get("type") == type_), None)
    transition = before.get("lastTransitionTime", now) if before and before.get("status") == "True" else now
    return [
        *kept,
        {
            "type": type_,
            "status": "True",
            "lastProbeTime": now,
            "lastHeartbeatTime": now,
            "lastTransitionTime": transition,
            "reason": reason,
            "message": message,
        },
    ]


def _outcome(
    pods: list[dict[str, Any]],
    report: dict[str, Any] | None,
    operator: dict[str, Any] | None,
    gave_up: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """How the job ended, if it did: the aggregator's word first, then the operator's, then the last report."""
    summary = _aggregator_summary(pods)
    if summary is None and gave_up is not None:
        kind = (operator or {}).get("kind", "the operator job")
        reason, message = gave_up.get("reason", ""), gave_up.get("message", "")
        summary = {"phase": "Failed", "reason": "TrainingJobFailed", "message": f"{kind} {reason}: {message}".strip()}
    if summary is None and (report or {}).get("status") in ("completed", "failed"):
        info = (report or {}).get("ownerInfo") or {}
        summary = {
            "phase": "Succeeded" if report and report["status"] == "completed" else "Failed",
            "reason": info.get("reason", ""),
            "message": info.get("message", ""),
            "round": info.get("currentRound", 0),
        }
    return summary


def job_status(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    report: dict[str, Any] | None,
    *,
    now: str,
    error: str = "",
    operator: dict[str, Any] | None = None,
    gave_up: dict[str, Any] | None = None,
) -> dict[str, Any]:
    old = dict(job.get("status") or {})
    status = dict(old)
    active, succeeded, failed = _counts(pods)
    status.update(active=active, succeeded=succeeded, failed=failed)
    if operator is not None:
        status["trainingJob"] = operator
    if old.get("phase") in FINAL:
        return status
    status.setdefault("startTime", now)
    info = (report or {}).get("ownerInfo") or {}
    if info:
        status["currentRound"] = int(info.get("currentRound", status.get("currentRound", 0)))
        total = int(info.get("rounds") or 0)
        if total:
            status["progressPercentage"] = min(100, int(100 * status["currentRound"] / total))
        history = list(info.get("history") or [])[-HISTORY:]
        if history:
            status["roundHistory"] = history
            last = history[-1]
            status["metrics"] = [
                {"name": k, "value": f"{float(last[k]):.4f}"} for k in ("accuracy", "loss") if k in last
            ]
        if isinstance(info.get("dropped"), dict):
            status["droppedUpdates"] = info["dropped"]
    conditions = list(old.get("conditions") or [])
    summary = _outcome(pods, report, operator, gave_up)
    if error:
        status["phase"] = "Failed"
        status["conditions"] = _condition(conditions, "Failed", "InvalidSpec", error, now)
        status["completionTime"] = now
    elif summary is not None and summary.get("phase") == "Succeeded":
        status["phase"] = "Succeeded"
        status["currentRound"] = int(summary.get("round", status.get("currentRound", 0)))
        status["progressPercentage"] = 100
        status["conditions"] = _condition(
            conditions, "Complete", "Completed", f"finished after round {status['currentRound']}", now
        )
        status["completionTime"] = now
    elif summary is not None:
        status["phase"] = "Failed"
        status["conditions"] = _condition(
            conditions, "Failed", str(summary.get("reason") or "Failed"), str(summary.get("message") or ""), now
        )
        status["completionTime"] = now
    elif active and any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        status["phase"] = "Running"
        round_ = status.get("currentRound", 0)
        message = f"round {round_ + 1} in progress" if round_ else "training started"
        if not any(c.get("type") == "Training" and c.get("message") == message for c in conditions):
            status["conditions"] = _condition(conditions, "Training", "Training", message, now)
    elif old.get("phase") != "Running":  # once running, a pod restarting does not make the job Pending again
        status["phase"] = "Pending"
    return status


def model_metrics(status: dict[str, Any]) -> list[dict[str, str]]:
    """The Model's status.metrics (Sedna: key/value), from the job's last round."""
    return [{"key": m["name"], "value": m["value"]} for m in status.get("metrics") or []]
