"""Bounded fuzzing of what a node controls: frames, the hello, and the content of every upstream message.

Whatever arrives, the decoder raises only MessageError, the session answers only with events (a Close for a bad
hello), the upstream parser raises only UpstreamError, and the cloud's handlers raise nothing; refused input
makes no request of the API server. The API server is a recorder here: the point is what the handlers do with
their input before any request, and a real one would only slow the run down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudcore.cloudhub import CloudHub
from cloudcore.edgecontroller.placement import Placement
from cloudcore.edgecontroller.upstream import RetryPolicy, Upstream
from common import upstream
from common.messages import Message, MessageError, NodeName, decode, new_message
from common.protocol.session import Close, CloudSession, Ready
from common.upstream import UpstreamError
from scripts.harness.pki import Pki

NODE = NodeName("edge-f")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000) | json_values.map(orjson.dumps))
def test_the_decoder_refuses_anything_but_envelopes_with_a_message_error(frame: bytes) -> None:
    try:
        messages = decode(frame)
    except MessageError:
        return
    assert all(isinstance(m, Message) for m in messages)


@FUZZ
@given(json_values, st.dictionaries(st.text(max_size=40), json_values, max_size=4))
def test_any_hello_content_gives_ready_or_a_close(content: Any, extra: dict[str, Any]) -> None:
    hello_content = {**content, **extra} if isinstance(content, dict) else content
    if isinstance(hello_content, dict) and "version" not in extra:
        hello_content["version"] = 1  # mostly the right version, so the rest of the hello gets checked too
    session = CloudSession(NODE, {}, now=0.0)
    message = new_message(source="edgehub", group="hub", operation="hello", content=hello_content, now_ms=0)
    events = session.receive(message, 0.0, 0)
    assert len(events) == 1 and isinstance(events[0], Close | Ready)


def _as_upstream(message: Message) -> upstream.Upstream:
    """A query (a token request) in the shape the builders return, so that it is mutated the same way."""
    r = message.route
    return upstream.Upstream("", r.group, r.operation, r.resource, message.content)


BUILT = [
    upstream.node_registration(NODE, labels={"a": "b"}, status={"conditions": [{"type": "Ready", "status": "True"}]}),
    upstream.node_status(NODE, {"conditions": [{"type": "Ready", "status": "True"}], "capacity": {"cpu": "2"}}),
    upstream.pod_status("default", "p", "u-p", {"phase": "Running", "conditions": [], "containerStatuses": []}),
    upstream.pod_deleted("default", "p", "u-p"),
    upstream.twin_reported("default", "d", "temp", value="1", value_type="int", timestamp_ms=0, observed_desired=""),
    upstream.device_state("default", "d", "online", last_online_time="2026-01-01T00:00:00Z"),
    upstream.event(
        upstream.Involved("Pod", "p", "u-p", "default"),
        reason="Started",
        message="Started container c",
        type_="Normal",
        count=1,
        first_timestamp="t0",
        last_timestamp="t0",
        host=NODE,
    ),
    _as_upstream(
        upstream.token_request(
            "default", "default", pod="p", pod_uid="u-p", audiences=[], expiration_seconds=3600, now_ms=0
        )
    ),
]


def mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """``value`` with the subtree picked by ``path`` (indices into dicts' items and lists) replaced."""
    if not path:
        return replacement
    if isinstance(value, dict) and value:
        keys = list(value)
        key = keys[path[0] % len(keys)]
        return {**value, key: mutate(value[key], path[1:], replacement)}
    if isinstance(value, list) and value:
        i = path[0] % len(value)
        return [*value[:i], mutate(value[i], path[1:], replacement), *value[i + 1 :]]
    return replacement


class Recorder:
    """Answers every request with an empty object, and remembers them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, **_: Any) -> Any:
        self.requests.append((method, path))
        return {"metadata": {"resourceVersion": "2"}}

    async def get_or_none(self, path: str) -> Any:
        return None


_PKI: list[Pki] = []  # one throwaway CA for every example: the hub needs a TLS context, never uses it here


def handler(recorder: Recorder) -> Upstream:
    if not _PKI:
        _PKI.append(Pki(Path(tempfile.mkdtemp(prefix="fuzz-pki-"))))
    hub = CloudHub(ssl_context=_PKI[0].server_context())
    placement = Placement(hub)
    placement.nodes[NODE] = {"metadata": {"name": NODE, "uid": "n"}, "status": {}}
    placement.pods[NODE] = {"default/p": {"metadata": {"name": "p", "namespace": "default", "uid": "u-p"}}}
    placement.devices[NODE] = {
        "default/d": {
            "metadata": {"name": "d", "namespace": "default", "resourceVersion": "1"},
            "spec": {"properties": [{"name": "temp"}]},
        }
    }
    return Upstream(
        kube=recorder,  # type: ignore[arg-type]
        hub=hub,
        placement=placement,
        now_ms=lambda: 0,
        retry=RetryPolicy(attempts=1),
    )


@FUZZ
@given(st.sampled_from(BUILT), st.lists(st.integers(min_value=0, max_value=50), max_size=5), json_values)
def test_mutated_upstream_content_is_refused_by_the_parser_or_handled_without_an_error(
    built: upstream.Upstream, path: list[int], replacement: Any
) -> None:
    mutated = dataclasses.replace(built, content=mutate(built.content, path, replacement))
    message = new_message(
        source="edgehub",
        group=mutated.group,
        operation=mutated.operation,
        resource=mutated.resource,
        content=mutated.content,
        now_ms=0,
    )
    try:
        upstream.parse(message)
        refused = False
    except UpstreamError:
        refused = True
    recorder = Recorder()
    asyncio.run(handler(recorder)(NODE, message))  # raises nothing, whatever the content
    if refused:
        assert recorder.requests == []  # refused input changes nothing
