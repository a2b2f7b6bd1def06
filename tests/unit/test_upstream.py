"""The edge→cloud contract (common/upstream.py): the wire format is pinned, and the parser refuses bad shapes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from common import upstream
from common.messages import Message, MsgId, encode, new_message
from common.protocol.outbox import Outbox, OutboxItem
from common.upstream import ResourceType, UpstreamError

STATUS = {"capacity": {"cpu": "2"}, "conditions": [{"type": "Ready", "status": "True"}]}


def on_the_wire(message: upstream.Upstream) -> bytes:
    """The frame the edge's outbox sends for ``message``, with the random msg_id fixed."""
    outbox = Outbox(source="edgehub")
    outbox.put(OutboxItem(message.key, 1, message.group, message.operation, message.resource, message.content))
    outbox.start_session()
    [sent] = outbox.poll(0.0, 1_700_000_000_000)
    return encode(dataclasses.replace(sent, header=dataclasses.replace(sent.header, msg_id=MsgId("m1"))))


# Frames as EdgeCore sent them before the contract had a home (edged.py, node.py and twin.py built them from
# string literals); the contract must keep them exactly.
PINNED = [
    (
        upstream.node_registration("edge-1", labels={"a": "b"}, status=STATUS),
        b'{"header":{"msg_id":"m1","timestamp":1700000000000,"seq":1},"route":{"source":"edgehub",'
        b'"group":"resource","operation":"insert","resource":"null/node/edge-1"},"content":{"metadata":'
        b'{"name":"edge-1","labels":{"a":"b"}},"status":{"capacity":{"cpu":"2"},"conditions":[{"type":"Ready",'
        b'"status":"True"}]}}}',
    ),
    (
        upstream.pod_status("ns1", "web", "u-1", {"phase": "Running", "conditions": []}),
        b'{"header":{"msg_id":"m1","timestamp":1700000000000,"seq":1},"route":{"source":"edgehub",'
        b'"group":"resource","operation":"update","resource":"ns1/podstatus/web"},"content":{"uid":"u-1",'
        b'"name":"web","status":{"phase":"Running","conditions":[]}}}',
    ),
    (
        upstream.pod_deleted("ns1", "web", "u-1"),
        b'{"header":{"msg_id":"m1","timestamp":1700000000000,"seq":1},"route":{"source":"edgehub",'
        b'"group":"resource","operation":"delete","resource":"ns1/pod/web"},"content":{"metadata":{"uid":"u-1",'
        b'"name":"web","namespace":"ns1"}}}',
    ),
    (
        upstream.twin_reported(
            "default", "t1", "temp", value="21.5", value_type="float", timestamp_ms=7, observed_desired=""
        ),
        b'{"header":{"msg_id":"m1","timestamp":1700000000000,"seq":1},"route":{"source":"edgehub",'
        b'"group":"twin","operation":"update","resource":"default/devicetwin/t1"},"content":{"twins":'
        b'[{"propertyName":"temp","reported":{"value":"21.5","metadata":{"timestamp":"7","type":"float"}},'
        b'"observedDesired":{"value":""}}]}}',
    ),
]


@pytest.mark.parametrize(("message", "frame"), PINNED, ids=lambda v: getattr(v, "key", ""))
def test_the_wire_format_is_what_edgecore_always_sent(message: upstream.Upstream, frame: bytes) -> None:
    assert on_the_wire(message) == frame


def test_outbox_keys_are_unchanged_so_rows_written_before_an_upgrade_still_coalesce() -> None:
    assert upstream.node_registration("n", labels={}, status={}).key == "node/n"
    assert upstream.node_status("n", {}).key == "nodestatus/n"
    assert upstream.pod_status("ns", "p", "u", {}).key == "podstatus/ns/p"
    assert upstream.pod_deleted("ns", "p", "u").key == "pod/ns/p/deleted"
    twin = upstream.twin_reported("ns", "d", "x", value="1", value_type="int", timestamp_ms=0, observed_desired="")
    assert twin.key == "devicetwin/ns/d/x"
    assert upstream.device_state("ns", "d", "online", last_online_time="t").key == "devicestate/ns/d"


def as_message(built: upstream.Upstream, seq: int | None = None) -> Message:
    return new_message(
        source="edgehub",
        group=built.group,
        operation=built.operation,
        resource=built.resource,
        content=built.content,
        now_ms=0,
        seq=seq,
    )


def test_every_builder_parses_back_to_its_request() -> None:
    assert upstream.parse(as_message(upstream.node_registration("n", labels={"a": "b"}, status=STATUS))) == (
        upstream.NodeRegistration("n", {"a": "b"}, STATUS)
    )
    assert upstream.parse(as_message(upstream.node_status("n", STATUS))) == upstream.NodeStatus("n", STATUS)
    assert upstream.parse(as_message(upstream.pod_status("ns", "p", "u", {"phase": "Running"}))) == (
        upstream.PodStatus("ns", "p", "u", {"phase": "Running"})
    )
    assert upstream.parse(as_message(upstream.pod_deleted("ns", "p", "u"))) == upstream.PodDeleted("ns", "p", "u")
    twin = upstream.twin_reported("ns", "d", "x", value="1", value_type="int", timestamp_ms=0, observed_desired="")
    parsed = upstream.parse(as_message(twin))
    assert isinstance(parsed, upstream.TwinReported) and parsed.twins[0]["propertyName"] == "x"
    state = upstream.device_state("ns", "d", "online", last_online_time="2026-01-01T00:00:00Z")
    assert upstream.parse(as_message(state)) == upstream.DeviceState("ns", "d", "online", "2026-01-01T00:00:00Z")
    query = upstream.query(ResourceType.CONFIGMAP, "ns", "cfg", now_ms=0)
    assert upstream.parse(query) == upstream.Query(ResourceType.CONFIGMAP, "ns", "cfg")
    dataset = upstream.dataset_status("ns", "d", {"phase": "Ready", "numberOfSamples": 3})
    assert upstream.parse(as_message(dataset)) == upstream.DatasetStatus(
        "ns", "d", {"phase": "Ready", "numberOfSamples": 3}
    )
    report = {"name": "w", "kind": "aggregate", "status": "running", "ownerInfo": {"currentRound": 2}}
    assert upstream.parse(as_message(upstream.worker_report("ns", "job", report))) == (
        upstream.WorkerReport("ns", "job", "w", "aggregate", "running", {"currentRound": 2})
    )
    transfer = upstream.fl_transfer("ns", "job", kind="update", worker="w", round_=4, transfer="t1", size=9, sha256=SHA)
    assert upstream.parse(as_message(transfer)) == upstream.FlTransfer("ns", "job", "update", "w", 4, "t1", 9, SHA)


def test_only_nodes_pods_configmaps_and_secrets_can_be_queried() -> None:
    with pytest.raises(ValueError, match="devicetwin cannot be queried"):
        upstream.query(ResourceType.DEVICETWIN, "ns", "d", now_ms=0)


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


def with_content(built: upstream.Upstream, content: Any) -> Message:
    return as_message(dataclasses.replace(built, content=content))


NODE = upstream.node_registration("n", labels={}, status=STATUS)
POD = upstream.pod_status("ns", "p", "u", {"phase": "Running"})
TWIN = upstream.twin_reported("ns", "d", "x", value="1", value_type="int", timestamp_ms=0, observed_desired="")
SHA = "a" * 64
TRANSFER = upstream.fl_transfer("ns", "job", kind="update", worker="w", round_=1, transfer="t", size=1, sha256=SHA)
REPORT = upstream.worker_report("ns", "job", {"name": "w", "kind": "train", "status": "running"})
DATASET = upstream.dataset_status("ns", "d", {"numberOfSamples": 1})

REFUSED = [
    (with_content(NODE, {"metadata": {"labels": ["a", "b"]}}), "content.metadata.labels must be an object, not a list"),
    (with_content(NODE, {"metadata": {"labels": {"a": 1}}}), "content.metadata.labels.a must be a string, not int"),
    (with_content(NODE, {"metadata": "n"}), "content.metadata must be an object, not a string"),
    (with_content(NODE, {"status": {"conditions": "Ready"}}), "content.status.conditions must be a list, not a string"),
    (with_content(NODE, {"status": {"conditions": [{"type": "Ready"}]}}), r"conditions\[0\].status must be a non"),
    (with_content(NODE, {"status": {"capacity": {"cpu": 2}}}), "content.status.capacity.cpu must be a string"),
    (with_content(NODE, "hello"), "content must be an object, not a string"),
    (with_content(POD, {"uid": "u", "status": deep(1000)}), "nested deeper than 32 levels"),
    (with_content(POD, {"status": {}}), "content.uid must be a non-empty string, not null"),
    (with_content(POD, {"uid": "u", "status": {"phase": 3}}), "content.status.phase must be a non-empty string"),
    (with_content(POD, {"uid": "u", "status": {"containerStatuses": {}}}), "containerStatuses must be a list"),
    (with_content(TWIN, {"twins": [{"propertyName": ["x"]}]}), r"twins\[0\].propertyName must be a non-empty string"),
    (with_content(TWIN, {"twins": []}), "content.twins must not be empty"),
    (with_content(TRANSFER, {"kind": "steal", "worker": "w", "round": 1}), "content.kind must be one of"),
    (with_content(TRANSFER, {"kind": "update", "worker": "w", "round": 1}), "of kind 'update' needs content.id"),
    (with_content(TRANSFER, {"kind": "join", "worker": "w", "round": True}), "content.round must be an integer"),
    (with_content(TRANSFER, {"kind": "join", "worker": "", "round": 0}), "content.worker must be a non-empty string"),
    (with_content(REPORT, {"name": "w", "kind": "train", "status": "bored"}), "content.status must be running"),
    (with_content(REPORT, {"name": "w", "kind": "cook", "status": "running"}), "content.kind must be 'train'"),
    (with_content(DATASET, {"status": {"numberOfSamples": -1}}), "numberOfSamples must be a non-negative integer"),
    (dataclasses.replace(as_message(POD), route=dataclasses.replace(as_message(POD).route, resource="ns/fish/p")),
     "unknown resource type 'fish'"),
    (dataclasses.replace(as_message(POD), route=dataclasses.replace(as_message(POD).route, operation="delete")),
     "no upstream message is 'delete' of 'podstatus'"),
    (dataclasses.replace(as_message(POD), route=dataclasses.replace(as_message(POD).route, resource="podstatus")),
     "is not <namespace>/<type>/<name>"),
]  # fmt: skip


@pytest.mark.parametrize(("message", "reason"), REFUSED)
def test_malformed_upstream_messages_are_refused_with_a_reason(message: Message, reason: str) -> None:
    with pytest.raises(UpstreamError, match=reason):
        upstream.parse(message)


def _twin(device: str, prop: str, value: str, seq: int) -> Message:
    built = upstream.twin_reported(
        "ns1", device, prop, value=value, value_type="int", timestamp_ms=1, observed_desired=""
    )
    return as_message(built, seq)


def test_twin_reports_about_one_device_in_a_batch_become_one_message_in_the_place_of_the_first() -> None:
    state = upstream.device_state("ns1", "a", "online", last_online_time="2026-12-04T00:00:00Z")
    stray = new_message(
        source="edgehub", group="twin", operation="update", resource="ns1/devicetwin/a", content={"twins": 3}, now_ms=0
    )
    batch = [
        _twin("a", "p0", "1", 1),
        _twin("b", "p0", "2", 2),
        as_message(state, 3),
        _twin("a", "p1", "3", 4),
        stray,  # not a twin report: passes alone, to be refused on its own
        _twin("a", "p0", "5", 5),
    ]
    out = upstream.coalesce_twin_reports(batch)
    assert [[m.header.seq for m in covered] for _, covered in out] == [[1, 4, 5], [2], [3], [None]]
    merged = upstream.parse(out[0][0])
    assert isinstance(merged, upstream.TwinReported) and merged.device == "a"
    # in the order they came: the handler merges by propertyName, so p0's later value wins
    assert [(t["propertyName"], t["reported"]["value"]) for t in merged.twins] == [
        ("p0", "1"),
        ("p1", "3"),
        ("p0", "5"),
    ]
    assert out[1][0] is batch[1] and out[2][0] is batch[2] and out[3][0] is stray
    assert upstream.coalesce_twin_reports([batch[1]]) == [(batch[1], [batch[1]])]
