"""CloudHub and EdgeHub over real mutual TLS on loopback, with a real SQLite store at the edge."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from common import upstream
from common.messages import NodeName, ObjectUid
from common.pki import CertificateAuthority, new_key, write_pair
from common.protocol.session import CloseCode
from common.tls import client_context
from scripts.harness.pki import Pki
from tests.tunnel import eventually, pod, running_cloud, running_edge

A = NodeName("edge-a")
B = NodeName("edge-b")


async def test_objects_arrive_are_updated_and_deleted_at_the_edge(pki: Pki, tmp_path: Path) -> None:
    async with (
        running_cloud(pki) as (hub, _),
        running_edge(pki, hub.settings.port or await hub.wait_serving(), tmp_path / "a.db") as edge,
    ):
        await asyncio.wait_for(edge.connected.wait(), 10)
        assert hub.connected_nodes() == {A}
        for i in range(3):
            hub.upsert(A, pod(i, 10 + i))
        await eventually(lambda: _has(edge, {f"edge-a-pod-{i}": str(10 + i) for i in range(3)}))
        hub.upsert(A, pod(1, 50))
        hub.upsert(A, pod(1, 40))  # an older version than the one desired is ignored
        hub.delete(A, ObjectUid("edge-a-pod-2"))
        await eventually(lambda: _has(edge, {"edge-a-pod-0": "10", "edge-a-pod-1": "50"}))
        stored = await edge.store.get("pod", "default", "p1")
        assert stored["metadata"]["resourceVersion"] == "50"
        stats = hub.stats(A)
        assert stats is not None and stats.inflight == 0 and stats.pending == 0 and stats.acked == 5


async def _has(edge: object, expected: dict[str, str]) -> bool:
    inventory = await edge.store.inventory()  # type: ignore[attr-defined]
    return dict(inventory) == expected


async def test_reconnect_after_cloud_restart_sends_only_the_difference(pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    objects = [pod(i, 100 + i) for i in range(20)]
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        hub.set_objects(A, objects)
        async with running_edge(pki, port, db) as edge:
            await eventually(lambda: _has(edge, {o.uid: o.resource_version for o in objects}))
            assert edge.last_resync == 20
    # A new CloudCore process: its caches hold two updated pods, one deleted and one new.
    objects[3] = pod(3, 500)
    objects[7] = pod(7, 501)
    del objects[11]
    objects.append(pod(99, 502))
    async with running_cloud(pki, port=port) as (hub, _):
        hub.set_objects(A, objects)
        async with running_edge(pki, port, db) as edge:
            await eventually(lambda: _has(edge, {o.uid: o.resource_version for o in objects}))
            assert edge.last_resync == 4
            stats = hub.stats(A)
            assert stats is not None and stats.resync == 4 and stats.acked == 4


async def test_edge_restart_loses_nothing_in_either_direction(pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    async with running_cloud(pki) as (hub, received):
        port = await hub.wait_serving()
        hub.upsert(A, pod(1, 1))
        async with running_edge(pki, port, db) as edge:
            await eventually(lambda: _has(edge, {"edge-a-pod-1": "1"}))
        # EdgeCore is down: the cloud moves on, and the edge had reported statuses just before stopping.
        hub.upsert(A, pod(1, 2))
        hub.upsert(A, pod(2, 3))
        async with running_edge(pki, 1, db) as offline:  # port 1: nothing listens, the edge stays offline
            for phase in ("Pending", "Running", "Succeeded"):
                await offline.publish(upstream.pod_status("default", "p1", "edge-a-pod-1", {"phase": phase}))
            await offline.publish(upstream.node_status("edge-a", {"phase": "Ready"}))
            assert len(offline.outbox) == 2
        async with running_edge(pki, port, db) as edge:
            await eventually(lambda: _has(edge, {"edge-a-pod-1": "2", "edge-a-pod-2": "3"}))
            await eventually(lambda: len(received.messages) == 2)
            await eventually(lambda: len(edge.outbox) == 0)
            assert await edge.store.outbox_load() == []
        statuses = sorted(m.content["status"]["phase"] for _, m in received.messages)
        assert statuses == ["Ready", "Succeeded"]  # latest value per key, once each


async def test_ten_thousand_updates_of_one_object_arrive_coalesced(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with running_edge(pki, port, tmp_path / "a.db") as edge:
            await asyncio.wait_for(edge.connected.wait(), 10)
            for rv in range(1, 10_001):
                hub.upsert(A, pod(1, rv))
                if rv % 500 == 0:
                    await asyncio.sleep(0.005)  # the watch delivers in bursts; let the link run meanwhile
            await eventually(lambda: _has(edge, {"edge-a-pod-1": "10000"}))
            assert edge.applied < 100, f"{edge.applied} applies for 10,000 updates"


async def test_malformed_frame_gets_a_clear_close_and_others_are_undisturbed(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with running_edge(pki, port, tmp_path / "b.db", node=B) as good:
            await asyncio.wait_for(good.connected.wait(), 10)
            async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A)) as bad:
                await bad.send("this is not json")
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(bad.recv(), 5)
                assert bad.close_code == CloseCode.INVALID_DATA
                assert str(bad.close_reason).startswith("malformed message: frame is not valid JSON")
            hub.upsert(B, pod(1, 7, node="edge-b"))
            await eventually(lambda: _has(good, {"edge-b-pod-1": "7"}))
            assert good.sessions == 1


async def test_oversized_frame_is_refused(pki: Pki) -> None:
    async with running_cloud(pki, max_frame_bytes=64 * 1024) as (hub, _):
        port = await hub.wait_serving()
        async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A), max_size=None) as ws:
            await ws.send("x" * (128 * 1024))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == CloseCode.TOO_BIG


async def test_hello_with_wrong_version_is_refused_with_reason(pki: Pki) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A)) as ws:
            await ws.send(
                '{"header":{"msg_id":"1","timestamp":0},"route":{"group":"hub","operation":"hello"},'
                '"content":{"version":99}}'
            )
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == CloseCode.PROTOCOL_ERROR
            assert "unsupported protocol version 99" in str(ws.close_reason)


async def test_peers_without_a_node_identity_are_refused(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        url = f"wss://127.0.0.1:{port}/"
        # No client certificate at all: the TLS handshake itself fails.
        anonymous = ssl.create_default_context(cafile=str(pki.ca_file))
        with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, InvalidHandshake)):
            async with connect(url, ssl=anonymous) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        # A certificate from another CA: refused by TLS too.
        other = CertificateAuthority.create("someone-else")
        key, cert = other.issue_node("edge-a")
        cert_path, key_path = write_pair(tmp_path / "other", "edge-a", key, cert)
        with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, InvalidHandshake)):
            async with connect(url, ssl=client_context(cert_path, key_path, pki.ca_file)) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        # Our CA, but not a node: a clear WebSocket close reason.
        admin_key = new_key()
        admin = pki.ca.issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]), admin_key.public_key(), client=True
        )
        cert_path, key_path = write_pair(tmp_path / "admin", "admin", admin_key, admin)
        async with connect(url, ssl=client_context(cert_path, key_path, pki.ca_file)) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == CloseCode.POLICY_VIOLATION
            assert "CN='admin' is not system:node:<node name>" in str(ws.close_reason)
        # A node's certificate with another node's name in the header.
        async with connect(url, ssl=pki.node_context(A), additional_headers={"node_id": "edge-b"}) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == CloseCode.POLICY_VIOLATION
            assert "does not match the certificate's node 'edge-a'" in str(ws.close_reason)
        assert hub.connected_nodes() == frozenset()


async def test_second_connection_of_a_node_replaces_the_first(pki: Pki) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A)) as first:
            await first.send(
                '{"header":{"msg_id":"1","timestamp":0},"route":{"group":"hub","operation":"hello"},'
                '"content":{"version":1,"inventory":{}}}'
            )
            await asyncio.wait_for(first.recv(), 5)  # welcome
            async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A)):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(first.recv(), 5)
                assert first.close_code == CloseCode.REPLACED


async def test_node_limit(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki, node_limit=1) as (hub, _):
        port = await hub.wait_serving()
        async with running_edge(pki, port, tmp_path / "a.db") as edge:
            await asyncio.wait_for(edge.connected.wait(), 10)
            async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(B)) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == CloseCode.TRY_AGAIN_LATER
                assert ws.close_reason == "node limit of 1 reached"
            assert hub.connected_nodes() == {A}


async def test_graceful_shutdown_closes_edges_with_going_away(pki: Pki) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        ws = await connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(A))
    # running_cloud cancelled serve(): the hub stopped accepting and closed its connections with 1001.
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == CloseCode.GOING_AWAY
    assert ws.close_reason == "CloudCore is shutting down"


HELLO = (
    '{"header":{"msg_id":"1","timestamp":0},"route":{"group":"hub","operation":"hello"},'
    '"content":{"version":1,"inventory":{}}}'
)


async def test_many_connections_of_one_node_at_once_leave_exactly_one(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki, node_limit=3) as (hub, _):
        port = await hub.wait_serving()
        context = pki.node_context(B)
        async with running_edge(pki, port, tmp_path / "a.db") as edge:  # a legitimate node, throughout
            await asyncio.wait_for(edge.connected.wait(), 10)
            conns = await asyncio.gather(*(connect(f"wss://127.0.0.1:{port}/", ssl=context) for _ in range(60)))
            await asyncio.gather(*(ws.send(HELLO) for ws in conns), return_exceptions=True)

            async def outcome(ws: object) -> int | None:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 3)  # type: ignore[attr-defined]
                except ConnectionClosed:
                    return int(ws.close_code)  # type: ignore[attr-defined]
                except TimeoutError:
                    return None  # still open

            outcomes = await asyncio.gather(*(outcome(ws) for ws in conns))
            assert outcomes.count(None) == 1, outcomes
            assert set(outcomes) - {None} == {CloseCode.REPLACED}
            assert len(hub.registry) == 2 and hub.connected_nodes() == {A, B}
            # the node limit counts what is registered, so a third node still fits, and a fourth does not
            async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(NodeName("edge-c"))) as c:
                await c.send(HELLO)
                await asyncio.wait_for(c.recv(), 5)  # welcome
                async with connect(f"wss://127.0.0.1:{port}/", ssl=pki.node_context(NodeName("edge-d"))) as d:
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(d.recv(), 5)
                    assert d.close_code == CloseCode.TRY_AGAIN_LATER
            for ws in conns:
                await ws.close()
