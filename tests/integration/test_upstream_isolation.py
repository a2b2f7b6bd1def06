"""Edge messages the API server is slow with, or keeps failing, hold up nobody else, and their own node only
for a bounded time.

The API server here is a small aiohttp stand-in on loopback: the real kube-apiserver cannot be made slow for
one node's requests and broken for another's. Everything else is real: CloudHub, EdgeHubs with their SQLite
outboxes over mutual TLS, the Upstream handler and the Kube client speaking HTTP to the stand-in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from aiohttp import web

from cloudcore.edgecontroller.placement import Placement
from cloudcore.edgecontroller.upstream import RetryPolicy, Upstream
from cloudcore.kube import Kube
from common import upstream
from common.hublink import now_ms
from scripts.harness.pki import Pki
from tests.tunnel import eventually, running_cloud, running_edge

STATUS = {"conditions": [{"type": "Ready", "status": "True"}]}


class StandIn:
    """PATCH /api/v1/nodes/<node>/status: ``slow`` hangs, ``flaky`` always answers 503, others 200."""

    def __init__(self) -> None:
        self.patches: collections.Counter[str] = collections.Counter()
        self.release = asyncio.Event()

    async def patch_status(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        self.patches[node] += 1
        if node == "slow":
            await self.release.wait()
        if node == "flaky":
            return web.json_response({"kind": "Status", "reason": "ServiceUnavailable", "message": "etcd"}, status=503)
        return web.json_response({"kind": "Node", "metadata": {"name": node}})


@contextlib.asynccontextmanager
async def stand_in_api(tmp_path: Path) -> AsyncIterator[tuple[StandIn, Kube]]:
    api = StandIn()
    app = web.Application()
    app.router.add_patch("/api/v1/nodes/{node}/status", api.patch_status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    kube = await Kube.connect(str(kubeconfig))
    try:
        yield api, kube
    finally:
        api.release.set()
        await kube.close()
        await runner.cleanup()


async def test_a_slow_node_stalls_no_other_and_a_failing_message_is_given_up(pki: Pki, tmp_path: Path) -> None:
    async with stand_in_api(tmp_path) as (api, kube), running_cloud(pki) as (hub, _):
        handler = Upstream(
            kube=kube,
            hub=hub,
            placement=Placement(hub),
            now_ms=now_ms,
            retry=RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.1),
        )
        hub.upstream = handler
        port = await hub.wait_serving()
        async with (
            running_edge(pki, port, tmp_path / "slow.db", node="slow") as slow,
            running_edge(pki, port, tmp_path / "fast.db", node="fast") as fast,
            running_edge(pki, port, tmp_path / "flaky.db", node="flaky") as flaky,
        ):
            for edge in (slow, fast, flaky):
                await asyncio.wait_for(edge.connected.wait(), 10)
            await slow.publish(upstream.node_status("slow", STATUS))
            await eventually(lambda: api.patches["slow"] == 1)  # and now it hangs in the API server
            await fast.publish(upstream.node_status("fast", STATUS))
            await eventually(lambda: len(fast.outbox) == 0, timeout=5)  # written and acked meanwhile
            assert api.patches["fast"] == 1 and len(slow.outbox) == 1
            await flaky.publish(upstream.node_status("flaky", STATUS))
            await eventually(lambda: len(flaky.outbox) == 0, timeout=10)  # given up after three tries, acked
            assert api.patches["flaky"] == 3 and handler.gave_up == 1
            await flaky.publish(upstream.node_status("flaky", {"conditions": []}))  # its next one is tried afresh
            await eventually(lambda: api.patches["flaky"] == 6, timeout=10)
            api.release.set()
            await eventually(lambda: len(slow.outbox) == 0, timeout=10)
