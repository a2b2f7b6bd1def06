"""The envelope codec: KubeEdge's field names, round trips, and one typed error for any bad input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.messages import Message, MessageError, Resource, decode, encode, new_message


def test_wire_format_uses_kubeedge_field_names() -> None:
    message = new_message(
        source="edgecontroller",
        group="resource",
        operation="insert",
        resource="default/pod/nginx",
        content={"kind": "Pod"},
        now_ms=1700000000000,
        resourceversion="42",
        seq=7,
    )
    wire = orjson.loads(encode(message))
    assert set(wire) == {"header", "route", "content"}
    assert wire["header"]["msg_id"] == message.header.msg_id
    assert wire["header"]["timestamp"] == 1700000000000
    assert wire["header"]["resourceversion"] == "42"
    assert wire["header"]["seq"] == 7
    assert wire["route"] == {
        "source": "edgecontroller",
        "group": "resource",
        "operation": "insert",
        "resource": "default/pod/nginx",
    }


def test_a_kubeedge_message_decodes() -> None:
    """As KubeEdge's EdgeHub sends its keepalive (extra header keys are ignored, as KubeEdge ignores ours)."""
    raw = (
        b'{"header":{"msg_id":"a1","parent_msg_id":"","timestamp":1,"sync":false,"x":1},'
        b'"route":{"source":"websocket","group":"resource","resource":"node","operation":"keepalive"},'
        b'"content":"ping"}'
    )
    [message] = decode(raw)
    assert message.route.operation == "keepalive" and message.content == "ping"
    assert message.header.parent_msg_id is None


def test_batch_round_trip() -> None:
    messages = [new_message(source="s", group="g", operation="update", now_ms=i, seq=i + 1) for i in range(3)]
    assert decode(encode(messages)) == messages


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"{", "frame is not valid JSON"),
        (b"[]", "batch frame is empty"),
        (b"42", "envelope: expected a JSON object, got int"),
        (b'{"route":{"operation":"x"}}', "envelope.header: expected an object, got null"),
        (b'{"header":{"timestamp":1},"route":{"operation":"x"}}', "envelope.header.msg_id: missing"),
        (
            b'{"header":{"msg_id":"a","timestamp":"1"},"route":{"operation":"x"}}',
            "envelope.header.timestamp: expected an integer, got string",
        ),
        (
            b'{"header":{"msg_id":"a","timestamp":1,"seq":0},"route":{"operation":"x"}}',
            "envelope.header.seq: must be > 0, got 0",
        ),
        (
            b'{"header":{"msg_id":"a","timestamp":1,"seq":true},"route":{"operation":"x"}}',
            "envelope.header.seq: expected an integer, got boolean",
        ),
        (b'{"header":{"msg_id":"a","timestamp":1},"route":{}}', "envelope.route.operation: missing"),
        (
            b'[{"header":{"msg_id":"a","timestamp":1},"route":{"operation":"x"}}, 1]',
            "batch[1]: expected a JSON object, got int",
        ),
    ],
)
def test_malformed_frames_raise_one_typed_error_naming_the_problem(frame: bytes, error: str) -> None:
    with pytest.raises(MessageError) as exc:
        decode(frame)
    assert str(exc.value).startswith(error)


def test_oversized_frame_is_refused_before_parsing() -> None:
    with pytest.raises(MessageError, match="frame of 101 bytes exceeds the limit of 100"):
        decode(b" " * 101, max_bytes=100)


def test_a_batch_longer_than_the_limit_is_refused_before_its_envelopes_are_checked() -> None:
    messages = [new_message(source="s", group="g", operation="update", now_ms=0, seq=i + 1) for i in range(5)]
    assert len(decode(encode(messages), max_batch=5)) == 5
    with pytest.raises(MessageError, match="batch of 5 envelopes exceeds the limit of 4"):
        decode(encode(messages), max_batch=4)


def test_resource_strings() -> None:
    assert Resource.parse("default/pod/nginx") == Resource("default", "pod", "nginx")
    assert Resource.parse("null/node/edge-1") == Resource(None, "node", "edge-1")
    assert str(Resource(None, "node", "edge-1")) == "null/node/edge-1"
    assert Resource.parse("ns/device/a/b").name == "a/b"
    for bad in ("", "pod", "default/pod", "/pod/x", "default//x"):
        with pytest.raises(MessageError):
            Resource.parse(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["header", "route", "content", "msg_id", "timestamp", "seq", "ack", "operation", "sync", "source"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_never_escape_as_another_error(data: bytes) -> None:
    try:
        result = decode(data)
    except MessageError:
        return
    assert all(isinstance(m, Message) for m in result)


@given(json_values)
def test_fuzz_arbitrary_json_never_escapes_as_another_error(value: object) -> None:
    try:
        result = decode(orjson.dumps(value))
    except MessageError:
        return
    assert all(isinstance(m, Message) for m in result)
