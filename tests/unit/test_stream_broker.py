"""The stream broker: at most max_per_node streams per node, and only the asked node with its token may dial in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cloudcore.cloudstream.broker import StreamBroker, StreamUnavailable
from common import streams
from common.messages import Message, NodeName

A, B = NodeName("a"), NodeName("b")


class Peer:
    """Stands in for an edge's dialled-back WebSocket connection (only what the broker touches)."""

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


async def test_a_stream_is_paired_only_with_the_node_and_token_it_was_asked_of() -> None:
    asked: list[tuple[NodeName, Message]] = []
    sent = asyncio.Event()

    async def send(node: NodeName, message: Message) -> bool:
        asked.append((node, message))
        sent.set()
        return True

    broker = StreamBroker(send, dial_timeout=5, max_per_node=1)

    async def open_one() -> str:
        async with broker.open(A):
            return "opened"

    opener = asyncio.create_task(open_one())
    await asyncio.wait_for(sent.wait(), 5)
    request = streams.parse_request(asked[0][1])
    intruder, wrong_token = Peer(), Peer()
    await broker.accept(B, intruder, request.path, request.token)  # type: ignore[arg-type]
    await broker.accept(A, wrong_token, request.path, "x" * 32)  # type: ignore[arg-type]
    assert intruder.closed is not None and intruder.closed[0] == 1008
    assert wrong_token.closed is not None and wrong_token.closed[0] == 1008
    with pytest.raises(StreamUnavailable) as full:  # the one allowed is still being opened
        async with broker.open(A):
            pass
    assert full.value.status == 429 and "the most it may have" in str(full.value)
    good = Peer()
    accepting = asyncio.create_task(broker.accept(A, good, request.path, request.token))  # type: ignore[arg-type]
    assert await asyncio.wait_for(opener, 5) == "opened"
    await asyncio.wait_for(accepting, 5)  # released once the stream is over
    assert broker.open_streams(A) == 0 and good.closed is None


async def test_a_node_that_does_not_dial_back_fails_the_request_with_its_name() -> None:
    async def send(node: NodeName, message: Any) -> bool:
        return True

    broker = StreamBroker(send, dial_timeout=0.1)
    with pytest.raises(StreamUnavailable, match=r"node a did not open the stream within 0\.1 s"):
        async with broker.open(A):
            pass
    assert broker.open_streams(A) == 0
