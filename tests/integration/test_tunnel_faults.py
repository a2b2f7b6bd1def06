"""The tunnel under network faults, through a fault-injecting TCP proxy between edge and cloud."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from common.messages import NodeName
from common.protocol.downstream import DesiredObject
from scripts.harness.pki import Pki
from tests.faultproxy import FaultProxy
from tests.tunnel import eventually, pod, running_cloud, running_edge

A = NodeName("edge-a")


async def inventory(edge: object) -> dict[str, str]:
    return dict(await edge.store.inventory())  # type: ignore[attr-defined]


async def test_messages_survive_repeated_cuts(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with FaultProxy("127.0.0.1", port) as proxy, running_edge(pki, proxy.port, tmp_path / "a.db") as edge:
            await asyncio.wait_for(edge.connected.wait(), 10)
            rv = 0
            for _cut in range(5):
                for _ in range(40):
                    rv += 1
                    hub.upsert(A, pod(rv % 30, rv))
                await asyncio.sleep(0.01)
                sessions = edge.sessions
                proxy.cut()  # mid-stream: some messages are in flight, some not yet acked
                for _ in range(40):
                    rv += 1
                    hub.upsert(A, pod(rv % 30, rv))  # while disconnected
                await eventually(lambda: edge.sessions > sessions)  # noqa: B023 - awaited right here
            desired = {str(uid): obj.resource_version for uid, obj in hub.desired(A).items()}
            await eventually(lambda: _equals(edge, desired))
            assert edge.sessions >= 5


async def _equals(edge: object, desired: Mapping[str, str]) -> bool:
    return await inventory(edge) == desired


async def test_half_open_link_is_detected_within_three_pings(pki: Pki, tmp_path: Path) -> None:
    interval = 0.3
    async with running_cloud(pki, keepalive_interval=interval, close_timeout=0.2) as (hub, _):
        port = await hub.wait_serving()
        events: list[tuple[float, bool]] = []
        hub.add_listener(lambda node, up: events.append((time.monotonic(), up)))
        async with (
            FaultProxy("127.0.0.1", port) as proxy,
            running_edge(pki, proxy.port, tmp_path / "a.db", keepalive_interval=interval, close_timeout=0.2) as edge,
        ):
            await asyncio.wait_for(edge.connected.wait(), 10)
            edge_down = asyncio.Event()
            edge.add_connection_listener(lambda up: None if up else edge_down.set())
            proxy.blackhole()  # both ways silent, both sockets still open: a half-open link
            started = time.monotonic()
            await asyncio.wait_for(edge_down.wait(), 10)
            edge_detect = time.monotonic() - started
            await eventually(lambda: any(not up for _, up in events), timeout=10)
            cloud_detect = next(t for t, up in events if not up) - started
            # read deadline 2.5 intervals + close timeout, well within 3 pings plus the close
            assert edge_detect < 3 * interval + 0.5, edge_detect
            assert cloud_detect < 3 * interval + 0.5, cloud_detect
            proxy.heal()
            hub.upsert(A, pod(1, 1))
            await eventually(lambda: _equals(edge, {"edge-a-pod-1": "1"}))  # and it comes back


async def test_updates_over_a_slow_link_arrive_coalesced_at_the_last_version(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with FaultProxy("127.0.0.1", port) as proxy, running_edge(pki, proxy.port, tmp_path / "a.db") as edge:
            await asyncio.wait_for(edge.connected.wait(), 10)
            proxy.delay(0.05)  # 100 ms round trips
            for rv in range(1, 10_001):
                hub.upsert(A, pod(1, rv))
                if rv % 1000 == 0:
                    await asyncio.sleep(0.01)
            await eventually(lambda: _equals(edge, {"edge-a-pod-1": "10000"}), timeout=20)
            assert edge.applied <= 12, f"{edge.applied} applies for 10,000 updates over a 100 ms link"


async def test_a_refused_and_then_healed_cloud_is_rejoined_with_backoff(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki) as (hub, _):
        port = await hub.wait_serving()
        async with FaultProxy("127.0.0.1", port) as proxy:
            proxy.refuse()
            async with running_edge(pki, proxy.port, tmp_path / "a.db") as edge:
                await asyncio.sleep(0.5)
                assert not edge.connected.is_set()
                hub.upsert(A, pod(1, 5))
                proxy.refuse(False)
                await asyncio.wait_for(edge.connected.wait(), 10)
                await eventually(lambda: _equals(edge, {"edge-a-pod-1": "5"}))


def big_pod(i: int, rv: int) -> DesiredObject:
    obj = pod(i, rv)
    content = {**obj.content, "metadata": {**obj.content["metadata"], "annotations": {"pad": "x" * 400_000}}}
    return DesiredObject(obj.uid, obj.resource_version, obj.resource, content)


async def test_an_edge_that_stops_reading_is_cut_off_at_the_write_timeout_and_resyncs_later(
    pki: Pki, tmp_path: Path
) -> None:
    # The edge keeps sending keepalives (so the cloud's read deadline never fires) but reads nothing the cloud
    # sends: the proxy holds the cloud→edge direction until its queue is full and TCP pushes back.
    async with running_cloud(pki, keepalive_interval=0.5, write_timeout=1.0, close_timeout=0.3) as (hub, _):
        port = await hub.wait_serving()
        ended: list[float] = []
        hub.add_listener(lambda node, up: None if up else ended.append(time.monotonic()))
        async with (
            FaultProxy("127.0.0.1", port) as proxy,
            running_edge(pki, proxy.port, tmp_path / "a.db", keepalive_interval=0.5, read_timeout=60) as edge,
        ):
            await asyncio.wait_for(edge.connected.wait(), 10)
            proxy.delay(3600, "down")
            started = time.monotonic()
            for i in range(100):  # 40 MB, 26 MB of it within the window: more than the proxy and both sockets hold
                hub.upsert(A, big_pod(i, i + 1))
            await eventually(lambda: bool(ended), timeout=15)
            assert ended[0] - started < 1.0 + 5.0, ended[0] - started  # the write timeout, not a read deadline
            proxy.heal()
            desired = {str(uid): obj.resource_version for uid, obj in hub.desired(A).items()}
            await eventually(lambda: _equals(edge, desired), timeout=60)


async def test_the_edges_read_deadline_closes_a_silent_link_at_that_deadline(pki: Pki, tmp_path: Path) -> None:
    async with running_cloud(pki, keepalive_interval=0.3, close_timeout=0.2) as (hub, _):
        port = await hub.wait_serving()
        async with (
            FaultProxy("127.0.0.1", port) as proxy,
            running_edge(
                pki, proxy.port, tmp_path / "a.db", keepalive_interval=5.0, read_timeout=0.8, close_timeout=0.2
            ) as edge,
        ):
            await asyncio.wait_for(edge.connected.wait(), 10)
            edge_down = asyncio.Event()
            edge.add_connection_listener(lambda up: None if up else edge_down.set())
            proxy.blackhole()
            started = time.monotonic()
            await asyncio.wait_for(edge_down.wait(), 10)
            # 0.8 s (plus the bounded close), not the 12.5 s that 2.5 heartbeats of 5 s would give
            assert time.monotonic() - started < 0.8 + 1.5
