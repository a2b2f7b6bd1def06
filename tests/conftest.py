"""Fixtures shared by every test: the real Kubernetes control plane lives here."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cloudcore.kube import Kube
from scripts.harness.cluster import ControlPlane, ControlPlaneError
from scripts.harness.containerd import Containerd, ContainerdError
from scripts.harness.containerd import start as start_containerd
from scripts.harness.mosquitto import Mosquitto, MosquittoError
from scripts.harness.pki import Pki
from scripts.harness.services import CloudCoreProcess
from tests.sockets import open_sockets

SOCKET_CLOSE_S = 5.0


@pytest.fixture(autouse=True)
async def sockets_closed() -> AsyncIterator[None]:
    """Every socket the test's loop opened is closed before pytest-asyncio closes the loop; one still open after
    a few seconds fails the test that left it.

    A TLS connection closed mid-response (a request cancelled before its headers came) sends close_notify and
    closes its socket only when the API server answers: 2.7 s measured. A loop closed before then leaves the
    socket to the garbage collector, whose ResourceWarning would fail whichever later test it lands in.
    """
    yield
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOCKET_CLOSE_S
    still_open = open_sockets(loop)
    while still_open and loop.time() < deadline:  # polled: nothing signals that a socket has closed
        await asyncio.sleep(0.01)
        still_open = open_sockets(loop)
    for transport in still_open:
        transport.abort()  # so that it does not fail a later test as well
    await asyncio.sleep(0)
    if still_open:
        pytest.fail(f"the test left sockets open {SOCKET_CLOSE_S:.0f} s after it ended: {still_open}")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on loopback, started once per test session by scripts/control-plane."""
    try:
        plane = ControlPlane.up(tmp_path_factory.mktemp("control-plane") / "state")
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield plane
    finally:
        plane.run("down")


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    """A raw-JSON client (over kubernetes_asyncio) for the session's API server."""
    client = await Kube.connect(str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA with a server certificate for 127.0.0.1; node certificates on demand."""
    return Pki(tmp_path / "pki")


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """A private containerd (CRI) with localhost/busybox:1.35 and localhost/pause:3.6 imported; see tests/containerd.py.

    Fails (never skips) when containerd cannot run here: the reason is in the failure.
    """
    try:
        ctd = start_containerd()
    except ContainerdError as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        pytest.fail(f"containerd cannot run on this machine: {reason}", pytrace=False)
    try:
        yield ctd
    finally:
        problems = ctd.stop()
        if problems:
            print("containerd teardown:", *problems, sep="\n  ", file=sys.stderr)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private mosquitto on a free 127.0.0.1 port (``.host``, ``.port``, ``.url``, ``.restart()``).

    Fails (never skips) when mosquitto cannot run here: the reason is in the failure.
    """
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
    except MosquittoError as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        pytest.fail(f"mosquitto cannot run on this machine: {reason}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def serving(proc: CloudCoreProcess) -> AsyncIterator[CloudCoreProcess]:
    proc.start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def cloud(control_plane: ControlPlane, pki: Pki, tmp_path: Path) -> AsyncIterator[CloudCoreProcess]:
    """The real ``cloudcore`` command against the session's API server, ready to serve edges."""
    async with serving(CloudCoreProcess(tmp_path / "cloudcore", kubeconfig=control_plane.kubeconfig, pki=pki)) as proc:
        yield proc


@pytest.fixture
async def cloud_from_secret(control_plane: ControlPlane, tmp_path: Path) -> AsyncIterator[CloudCoreProcess]:
    """``cloudcore`` as deployed: no CA files, so its CA comes from the Secret kubeedge/casecret (created if
    absent) and it runs the certificate service that ``keadm join`` uses."""
    proc = CloudCoreProcess(tmp_path / "cloudcore", kubeconfig=control_plane.kubeconfig, pki=None)
    async with serving(proc):
        yield proc
