"""Helpers for tunnel tests: a CloudHub on a free loopback port, EdgeHubs with their stores, ``eventually``."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cloudcore.cloudhub import CloudHub, HubSettings
from common.messages import Message, NodeName, ObjectUid
from common.protocol.backoff import backoff_delays
from common.protocol.downstream import DesiredObject
from edgecore.edgehub import EdgeHub, EdgeHubSettings
from edgecore.metamanager.store import MetaStore
from scripts.harness.pki import Pki


def pod(i: int, rv: int, node: str = "edge-a") -> DesiredObject:
    uid = ObjectUid(f"{node}-pod-{i}")
    content = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p{i}", "namespace": "default", "uid": uid, "resourceVersion": str(rv)},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "localhost/busybox:1.35"}]},
    }
    return DesiredObject(uid, str(rv), f"default/pod/p{i}", content)


def fast_backoff() -> Iterator[float]:
    return backoff_delays(initial=0.05, cap=0.3, rng=random.Random(1))


@dataclass
class Received:
    messages: list[tuple[NodeName, Message]] = field(default_factory=list)

    async def __call__(self, node: NodeName, message: Message) -> None:
        self.messages.append((node, message))


@contextlib.asynccontextmanager
async def running_cloud(pki: Pki, **settings: object) -> AsyncIterator[tuple[CloudHub, Received]]:
    received = Received()
    options: dict[str, object] = {"host": "127.0.0.1", "port": 0, "close_timeout": 0.5, "shutdown_timeout": 2.0}
    options.update(settings)
    hub = CloudHub(ssl_context=pki.server_context(), settings=HubSettings(**options), upstream=received)  # type: ignore[arg-type]
    task = asyncio.create_task(hub.serve(), name="test.cloudhub")
    try:
        await asyncio.wait_for(hub.wait_serving(), 10)
        yield hub, received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_edge(
    pki: Pki,
    port: int | str,
    db: Path,
    node: str = "edge-a",
    on_message: Callable[[Message], Awaitable[None]] | None = None,
    **settings: object,
) -> AsyncIterator[EdgeHub]:
    store = await MetaStore.open(db)
    server = f"127.0.0.1:{port}" if isinstance(port, int) else port  # or "host:port,host:port"
    options: dict[str, object] = {"server": server, "node_name": NodeName(node), "close_timeout": 0.5}
    options.update(settings)
    edge = EdgeHub(
        settings=EdgeHubSettings(**options),  # type: ignore[arg-type]
        ssl_context=pki.node_context(node),
        store=store,
        delays=fast_backoff,
        on_message=on_message,
    )
    task = asyncio.create_task(edge.run(), name=f"test.edgehub.{node}")
    try:
        yield edge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def eventually(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:  # noqa: ASYNC109
    """Wait until ``check()`` is truthy (or is an awaitable resolving truthy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
