"""CloudCore's pure parts of the real-cluster work: the no-expiry tolerations, and the contract of the two new
upstream kinds (token requests and events), refused with reasons when malformed."""

from __future__ import annotations

from typing import Any

import pytest

from cloudcore.edgecontroller.autonomy import Autonomy, at_risk, protected
from cloudcore.edgecontroller.placement import desired
from common import upstream
from common.messages import new_message

DEFAULTS = [  # what the DefaultTolerationSeconds admission adds to every pod
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]


def test_default_tolerations_lose_their_time_limit_and_missing_ones_are_added() -> None:
    mine = {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}
    assert protected([mine, *DEFAULTS]) == [
        mine,
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert protected([]) == [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert protected(protected(DEFAULTS) or []) is None  # done once: no patch loop
    assert protected([{"operator": "Exists"}]) is None  # tolerates everything already (a DaemonSet-like pod)


def _node(ready: str, taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "edge-1"},
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def _pod(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1", **metadata},
        "spec": {"nodeName": "edge-1"},
    }


async def test_only_the_pods_of_a_node_at_risk_are_queued_for_tolerations() -> None:
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert not at_risk(_node("True")) and at_risk(_node("Unknown")) and at_risk(_node("True", [unreachable]))
    assert not at_risk(_node("True", [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]))
    nodes: dict[Any, Any] = {"edge-1": _node("True")}
    pods: dict[Any, Any] = {
        "edge-1": {"ns/a": _pod("a"), "ns/out": _pod("out", annotations={"edge.kubage.io/autonomy": "false"})}
    }
    autonomy = Autonomy(None, nodes, pods)  # type: ignore[arg-type]  # nothing is patched here: the queue is read
    autonomy.on_pod("ADDED", pods["edge-1"]["ns/a"], None)
    assert autonomy._queue.empty()  # a healthy node: the pod stays as it was created
    nodes["edge-1"] = _node("Unknown", [unreachable])
    autonomy.on_node("MODIFIED", nodes["edge-1"], None)
    assert [autonomy._queue.get_nowait()["metadata"]["name"]] == ["a"] and autonomy._queue.empty()
    autonomy.on_pod("ADDED", _pod("late"), None)  # bound while the node is unreachable: at once
    assert autonomy._queue.get_nowait()["metadata"]["name"] == "late"


def message(operation: str, resource: str, content: Any) -> Any:
    return new_message(
        source="edged", group="resource", operation=operation, resource=resource, content=content, now_ms=0
    )


def test_a_token_request_parses_into_its_pod_and_account() -> None:
    asked = upstream.token_request(
        "shop", "default", pod="web", pod_uid="u1", audiences=["vault"], expiration_seconds=3607, now_ms=0
    )
    assert upstream.parse(asked) == upstream.TokenQuery("shop", "default", "web", "u1", ["vault"], 3607)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"boundObjectRef": {"kind": "Secret", "name": "s", "uid": "u"}}, "boundObjectRef.kind must be 'Pod'"),
        ({"boundObjectRef": {"kind": "Pod", "name": "p"}}, "boundObjectRef.uid must be a non-empty string"),
        ({"boundObjectRef": {"kind": "Pod", "name": "p", "uid": "u"}, "expirationSeconds": 60}, "at least 600"),
        ({"boundObjectRef": {"kind": "Pod", "name": "p", "uid": "u"}, "audiences": "api"}, "audiences must be a list"),
    ],
)
def test_a_malformed_token_request_is_refused_with_the_reason(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(upstream.UpstreamError, match=reason):
        upstream.parse(message("query", "shop/serviceaccounttoken/default", {"spec": spec}))


def test_an_event_keeps_one_name_per_object_reason_and_message() -> None:
    involved = upstream.Involved("Pod", "web", "u1", "shop", "spec.containers{c}")
    first = upstream.event(
        involved, reason="Started", message="Started container c", type_="Normal", count=1,
        first_timestamp="t0", last_timestamp="t0", host="n1",
    )  # fmt: skip
    again = upstream.event(
        involved, reason="Started", message="Started container c", type_="Normal", count=2,
        first_timestamp="t0", last_timestamp="t1", host="n1",
    )  # fmt: skip
    assert first.key == again.key and first.resource == again.resource
    parsed = upstream.parse(message(again.operation, again.resource, again.content))
    assert isinstance(parsed, upstream.EventReport) and parsed.count == 2 and parsed.involved == involved


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"involvedObject": {"kind": "Secret", "name": "s", "uid": "u"}}, "kind must be 'Pod' or 'Node'"),
        ({"type": "Fatal"}, "content.type must be one of"),
        ({"count": 0}, "count must be a positive integer"),
        ({"message": "x" * 2000}, "at most 1024 characters"),
        ({"reason": ""}, "content.reason must be a non-empty string"),
    ],
)
def test_a_malformed_event_is_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    good = upstream.event(
        upstream.Involved("Pod", "web", "u1", "shop"), reason="Pulled", message="m", type_="Normal", count=1,
        first_timestamp="t0", last_timestamp="t0", host="n1",
    )  # fmt: skip
    with pytest.raises(upstream.UpstreamError, match=reason):
        upstream.parse(message(good.operation, good.resource, {**good.content, **change}))


def test_a_pod_goes_down_with_its_readiness_gate_conditions_only_and_they_count_in_its_digest() -> None:
    def pod(gate_status: str, phase: str) -> dict[str, Any]:
        return {
            "metadata": {"uid": "u1", "name": "p", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"readinessGates": [{"conditionType": "example.com/gate"}]},
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": "example.com/gate", "status": gate_status},
                    {"type": "Ready", "status": "False"},
                ],
            },
        }

    sent = desired("pod", pod("False", "Pending"))
    assert sent.content["status"] == {"conditions": [{"type": "example.com/gate", "status": "False"}]}
    assert desired("pod", pod("False", "Running")).digest == sent.digest  # the edge's own report: no resend
    assert desired("pod", pod("True", "Pending")).digest != sent.digest  # the gate flipped: it goes down
