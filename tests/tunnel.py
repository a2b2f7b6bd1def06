"""Helpers for tunnel tests: a throwaway PKI, a CloudHub on a free loopback port, EdgeHubs with their stores."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cloudcore.cloudhub import CloudHub, HubSettings
from common.messages import Message, NodeName, ObjectUid
from common.pki import CertificateAuthority, cert_pem, write_pair
from common.protocol.backoff import backoff_delays
from common.protocol.downstream import DesiredObject
from common.tls import client_context, server_context
from edgecore.edgehub import EdgeHub, EdgeHubSettings
from edgecore.metamanager.store import MetaStore


@dataclass
class Pki:
    directory: Path
    ca: CertificateAuthority = field(default_factory=lambda: CertificateAuthority.create("kubage-test-ca"))

    def __post_init__(self) -> None:
        self.ca_file = self.directory / "ca.crt"
        self.ca_key_file = self.directory / "ca.key"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(cert_pem(self.ca.cert))
        self.ca_key_file.write_bytes(self.ca.key_pem)
        self.ca_key_file.chmod(0o600)
        key, cert = self.ca.issue_server(["127.0.0.1", "localhost"])
        self.server_cert, self.server_key = write_pair(self.directory, "server", key, cert)

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.server_cert, self.server_key, self.ca_file)

    def node_files(self, node: str) -> tuple[Path, Path]:
        """A client certificate for ``node`` (CN=system:node:<node>): its cert and key paths."""
        key, cert = self.ca.issue_node(node)
        return write_pair(self.directory, f"node-{node}", key, cert)

    def node_context(self, node: str) -> ssl.SSLContext:
        cert_path, key_path = self.node_files(node)
        return client_context(cert_path, key_path, self.ca_file)


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
