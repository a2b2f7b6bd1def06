"""cloudcore.kube against the real API server: errors by kind, kubeAPIConfig.master, qps and burst."""

from __future__ import annotations

import asyncio
import time

import pytest

from cloudcore.kube import Conflict, Invalid, Kube, KubeUnavailable, NotFound, retryable
from scripts.harness.cluster import ControlPlane
from scripts.harness.procs import free_port
from tests.sockets import open_sockets

pytestmark = pytest.mark.kube


async def test_refusals_arrive_as_the_error_the_caller_acts_on(kube: Kube) -> None:
    with pytest.raises(NotFound) as missing:
        await kube.get("/api/v1/namespaces/no-such-namespace-here")
    assert missing.value.status == 404 and not retryable(missing.value)
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "kube-client-conflict"}})
    with pytest.raises(Conflict):
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "kube-client-conflict"}})
    with pytest.raises(Invalid):
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "Not_A_Name"}})
    assert await kube.get_or_none("/api/v1/namespaces/no-such-namespace-here") is None


async def test_master_replaces_the_kubeconfigs_server(control_plane: ControlPlane) -> None:
    closed = f"https://127.0.0.1:{free_port()}"
    elsewhere = await Kube.connect(str(control_plane.kubeconfig), master=closed)
    try:
        assert elsewhere.host == closed
        with pytest.raises(KubeUnavailable) as unreachable:
            await elsewhere.get("/version")
        assert retryable(unreachable.value) and unreachable.value.__cause__ is not None
    finally:
        await elsewhere.close()
    same = await Kube.connect(str(control_plane.kubeconfig))
    try:
        real = same.host
    finally:
        await same.close()
    pointed = await Kube.connect(str(control_plane.kubeconfig), master=real + "/")
    try:
        assert (await pointed.get("/version"))["major"] == "1"
    finally:
        await pointed.close()


async def test_requests_beyond_the_burst_wait_for_the_rate(control_plane: ControlPlane) -> None:
    limited = await Kube.connect(str(control_plane.kubeconfig), qps=4, burst=2)
    try:
        started = time.monotonic()
        await asyncio.gather(*(limited.get("/version") for _ in range(6)))
        took = time.monotonic() - started
    finally:
        await limited.close()
    assert took >= (6 - 2) / 4 - 0.05, took  # two at once, then one every 0.25 s


async def test_a_watch_left_early_closes_its_socket_at_once(kube: Kube) -> None:
    """Its connection cannot be reused, and a graceful TLS close would hold the socket until the API server
    answers close_notify (2.7 s measured): it is aborted instead."""
    loop = asyncio.get_running_loop()
    _, version = await kube.list_all("/api/v1/namespaces/default/configmaps")
    await kube.close()  # no pooled connection left to count
    assert len(open_sockets(loop)) == 0

    async def watch() -> None:
        async for _ in kube.watch("/api/v1/namespaces/default/configmaps", version, timeout_seconds=60):
            pass

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    assert len(open_sockets(loop)) == 1
    watching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watching
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(open_sockets(loop)) == 0
