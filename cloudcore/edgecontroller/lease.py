"""Node leases in ``kube-node-lease``, renewed by the CloudCore replica that holds the node's session.

While an edge's session is alive, its node lease stays fresh, so Kubernetes's node lifecycle sees the node
as alive; when the session ends, renewals stop and the node goes NotReady after the lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

from cloudcore.cloudhub import CloudHub
from cloudcore.kube import MERGE_PATCH, Kube, KubeError, NotFound
from common.logging import get_logger
from common.messages import NodeName

log = get_logger(__name__)

NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # as the kubelet's default
CONCURRENCY = 16


def micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseRenewer:
    def __init__(
        self,
        *,
        kube: Kube,
        hub: CloudHub,
        interval: float = LEASE_DURATION_S / 4,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self._kube = kube
        # Written on every renewal by the replica holding the session: the session directory of cloudstream.
        self._annotations = annotations or {}
        self._hub = hub
        self._interval = interval
        # Nodes whose session has just started: renewed at once, not at the next round (up to an interval
        # later), as a kubelet writes its lease when it starts. Until then the node would read as never
        # connected to anyone who looks at its Lease (cloudstream's offline message, say).
        self._connected: set[NodeName] = set()
        self._wake = asyncio.Event()
        hub.add_listener(self._on_connection)
        self.renewals = 0

    def _on_connection(self, node: NodeName, connected: bool) -> None:
        if connected:
            self._connected.add(node)
            self._wake.set()

    async def run(self) -> None:
        # A round renews every connected node, a bounded number at a time: one request after another
        # would outgrow the interval at a few thousand nodes.
        gate = asyncio.Semaphore(CONCURRENCY)

        async def renew(node: NodeName) -> None:
            async with gate:
                try:
                    await self.renew(node)
                except KubeError as exc:
                    log.warning("lease_renewal_failed", node=node, error=str(exc))

        loop = asyncio.get_running_loop()
        while True:
            deadline = loop.time() + self._interval
            self._connected.clear()  # this round covers them
            await asyncio.gather(*(renew(node) for node in sorted(self._hub.connected_nodes())))
            while (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                self._wake.clear()
                fresh, self._connected = self._connected, set()
                await asyncio.gather(*(renew(node) for node in sorted(fresh)))

    async def renew(self, node: NodeName) -> None:
        spec = {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_time()}
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
        try:
            body = {"metadata": {"annotations": self._annotations}, "spec": spec}
            await self._kube.request("PATCH", f"{path}/{node}", body=body, content_type=MERGE_PATCH)
        except NotFound:
            metadata: dict[str, object] = {"name": node, "namespace": NAMESPACE, "annotations": self._annotations}
            await self._kube.request(
                "POST",
                path,
                body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec},
            )
        self.renewals += 1
