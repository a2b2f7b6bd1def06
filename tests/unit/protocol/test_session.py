"""Handshake, inventory diff, acks and liveness of the hub session, driven by hand with explicit times."""

from __future__ import annotations

from common.messages import Group, Message, NodeName, ObjectUid, Operation, new_message
from common.protocol.digest import content_digest
from common.protocol.downstream import DesiredObject
from common.protocol.outbox import Outbox, OutboxItem
from common.protocol.session import (
    Close,
    CloseCode,
    CloudSession,
    Deliver,
    EdgeSession,
    OutboxDelivered,
    Ready,
    Received,
)


def obj(i: int, rv: int) -> DesiredObject:
    uid = ObjectUid(f"u{i}")
    return DesiredObject(uid, str(rv), f"default/pod/p{i}", {"metadata": {"uid": uid, "name": f"p{i}"}})


def hello(inventory: dict[str, str] | None = None, version: int = 1) -> Message:
    return new_message(
        source="edgehub",
        group=Group.HUB,
        operation=Operation.HELLO,
        now_ms=0,
        content={"version": version, "inventory": inventory or {}, "batching": True},
    )


def test_reconnect_sends_only_the_difference() -> None:
    desired = {o.uid: o for o in [obj(1, 10), obj(2, 20), obj(3, 30), obj(4, 40)]}
    # The edge holds u1 current, u2 older, u5 which is no longer assigned; u3 and u4 are missing.
    inventory = {"u1": "10", "u2": "15", "u5": "7"}
    cloud = CloudSession(NodeName("n"), desired, now=0.0, window=64)
    [ready] = cloud.receive(hello(inventory), 0.0, 0)
    assert ready == Ready(resync=4, batching=True)
    out = cloud.messages_to_send(0.0, 0)
    assert out[0].route.operation == Operation.WELCOME
    assert out[0].content["resync"] == 4
    sent = {(m.route.operation, m.route.resource, m.header.resourceversion) for m in out[1:]}
    assert sent == {
        ("update", "default/pod/p2", "20"),
        ("insert", "default/pod/p3", "30"),
        ("insert", "default/pod/p4", "40"),
        ("delete", "", ""),
    }
    delete = next(m for m in out if m.route.operation == Operation.DELETE)
    assert delete.content == {"metadata": {"uid": "u5"}}


def test_edge_newer_than_a_lagging_cache_is_left_alone() -> None:
    """After failover a replica's cache may trail the edge: it must not push the older version."""
    desired = {o.uid: o for o in [obj(1, 100)]}
    cloud = CloudSession(NodeName("n"), desired, now=0.0)
    [ready] = cloud.receive(hello({"u1": "105"}), 0.0, 0)
    assert isinstance(ready, Ready) and ready.resync == 0


def test_first_message_must_be_hello() -> None:
    cloud = CloudSession(NodeName("n"), {}, now=0.0)
    keepalive = new_message(source="edgehub", group=Group.HUB, operation=Operation.KEEPALIVE, now_ms=0)
    [event] = cloud.receive(keepalive, 0.0, 0)
    assert event == Close(CloseCode.PROTOCOL_ERROR, "expected hello first, got 'keepalive'")


def test_unknown_protocol_version_is_refused_with_a_reason() -> None:
    cloud = CloudSession(NodeName("n"), {}, now=0.0)
    [event] = cloud.receive(hello(version=9), 0.0, 0)
    assert isinstance(event, Close) and event.code == CloseCode.PROTOCOL_ERROR
    assert "unsupported protocol version 9" in event.reason


def test_malformed_inventory_is_refused() -> None:
    cloud = CloudSession(NodeName("n"), {}, now=0.0)
    bad = hello()
    bad.content["inventory"] = {"u1": 5}
    [event] = cloud.receive(bad, 0.0, 0)
    assert isinstance(event, Close) and event.code == CloseCode.INVALID_DATA


def established(outbox: Outbox | None = None) -> tuple[CloudSession, EdgeSession]:
    cloud = CloudSession(NodeName("n"), {}, now=0.0, keepalive_interval=10.0)
    edge = EdgeSession({}, Outbox() if outbox is None else outbox, now=0.0, keepalive_interval=10.0)
    cloud.receive(edge.hello(0.0, 0), 0.0, 0)
    [welcome] = cloud.messages_to_send(0.0, 0)
    [ready] = edge.receive(welcome, 0.0, 0)
    assert isinstance(ready, Ready)
    return cloud, edge


def test_keepalive_after_an_idle_interval_and_timeout_after_two_and_a_half() -> None:
    cloud, edge = established()
    assert edge.messages_to_send(9.9, 0) == []
    [ping] = edge.messages_to_send(10.0, 0)
    assert ping.route.operation == Operation.KEEPALIVE
    assert cloud.receive(ping, 10.0, 0) == []
    assert cloud.check_timeouts(34.9) is None
    timeout = cloud.check_timeouts(35.1)
    assert timeout is not None and timeout.code == CloseCode.TIMEOUT
    assert "nothing received from the edge for 25.1s" in timeout.reason
    assert edge.next_deadline() == 20.0


def test_upstream_outbox_is_acked_after_the_cloud_handled_it() -> None:
    outbox = Outbox()
    cloud, edge = established(outbox)
    outbox.put(
        OutboxItem(
            "podstatus/default/p1",
            outbox.next_version(),
            "resource",
            "update",
            "default/podstatus/p1",
            {"phase": "Running"},
        )
    )
    [status] = edge.messages_to_send(1.0, 0)
    [event] = cloud.receive(status, 1.0, 0)
    assert isinstance(event, Deliver) and event.message.content == {"phase": "Running"}
    assert [m.route.operation for m in cloud.messages_to_send(1.0, 0)] == []  # not handled yet: no ack
    cloud.delivered(event.seq)
    [ack] = cloud.messages_to_send(1.1, 0)
    assert ack.header.ack == 1
    [delivered] = edge.receive(ack, 1.1, 0)
    assert isinstance(delivered, OutboxDelivered) and [i.key for i in delivered.items] == ["podstatus/default/p1"]
    assert len(outbox) == 0


def test_best_effort_messages_pass_through_without_acks() -> None:
    cloud, _ = established()
    query = new_message(
        source="edged", group=Group.RESOURCE, operation=Operation.QUERY, resource="default/configmap/c", now_ms=0
    )
    assert cloud.receive(query, 1.0, 0) == [Received(query)]


def test_hello_inside_an_open_session_is_a_protocol_error() -> None:
    cloud, edge = established()
    [event] = cloud.receive(edge.hello(1.0, 0), 1.0, 0)
    assert isinstance(event, Close) and event.code == CloseCode.PROTOCOL_ERROR


def test_reconnect_skips_objects_whose_rv_moved_on_without_a_content_change() -> None:
    """The edge's own status reports bump a pod's rv in the cloud; that alone must not resend the pod."""
    base = {"metadata": {"uid": "u1", "name": "p1", "resourceVersion": "10"}, "spec": {"x": 1}}
    later = {
        "metadata": {"uid": "u1", "name": "p1", "resourceVersion": "20"},
        "spec": {"x": 1},
        "status": {"phase": "Running"},
    }
    changed = {"metadata": {"uid": "u1", "name": "p1", "resourceVersion": "30"}, "spec": {"x": 2}}
    assert content_digest(base) == content_digest(later) != content_digest(changed)

    same = DesiredObject(ObjectUid("u1"), "20", "default/pod/p1", later, digest=content_digest(later))
    cloud = CloudSession(NodeName("n"), {same.uid: same}, now=0.0)
    edge_hello = EdgeSession(
        {ObjectUid("u1"): "10"}, Outbox(), digests={ObjectUid("u1"): content_digest(base)}, now=0.0
    ).hello(0.0, 0)
    [ready] = cloud.receive(edge_hello, 0.0, 0)
    assert isinstance(ready, Ready) and ready.resync == 0

    other = DesiredObject(ObjectUid("u1"), "30", "default/pod/p1", changed, digest=content_digest(changed))
    cloud = CloudSession(NodeName("n"), {other.uid: other}, now=0.0)
    [ready] = cloud.receive(edge_hello, 0.0, 0)
    assert isinstance(ready, Ready) and ready.resync == 1


def test_a_hello_with_more_entries_than_any_node_holds_is_too_big() -> None:
    cloud = CloudSession(NodeName("n"), {}, now=0.0, max_inventory=3)
    [event] = cloud.receive(hello({f"u{i}": "1" for i in range(4)}), 0.0, 0)
    assert event == Close(CloseCode.TOO_BIG, "hello inventory has 4 entries; the limit is 3")
    cloud = CloudSession(NodeName("n"), {}, now=0.0, max_inventory=3)
    [event] = cloud.receive(hello({f"u{i}": "1" for i in range(3)}), 0.0, 0)
    assert isinstance(event, Ready)


def test_a_hello_entry_longer_than_any_uid_or_version_is_a_policy_violation() -> None:
    cloud = CloudSession(NodeName("n"), {}, now=0.0)
    [event] = cloud.receive(hello({"u1": "9" * 257}), 0.0, 0)
    reason = "hello inventory has an entry of 257 characters; the limit is 256"
    assert event == Close(CloseCode.POLICY_VIOLATION, reason)
