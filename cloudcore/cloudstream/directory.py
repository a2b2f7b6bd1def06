"""Which CloudCore replica holds a node's session, kept in Kubernetes on the node's Lease.

The replica that renews a connected node's Lease (``edgecontroller.lease``) writes its own stream endpoint
into the annotation ``ANNOTATION``; a replica asked for a stream to a node it does not hold reads it there.
The Lease's renewTime also says when the node was last connected.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from cloudcore.kube import Kube, KubeError

ANNOTATION = "kubage.io/cloudcore-stream"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
LEASE_DURATION_S = 40


@dataclass(frozen=True)
class Holder:
    endpoint: str  # host:port of that replica's stream server; "" if none is recorded
    renewed: dt.datetime | None  # the Lease's last renewal: while the node was connected
    fresh: bool  # renewed within the lease duration: the node is connected there now


def parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class SessionDirectory:
    def __init__(self, kube: Kube, *, endpoint: str) -> None:
        self._kube = kube
        self.endpoint = endpoint  # this replica's stream server, as other replicas reach it

    async def holder(self, node: str) -> Holder:
        lease = None
        for attempt in range(3):  # a busy API server's hiccup must not read as "never connected"
            try:
                lease = await self._kube.get_or_none(f"{LEASES}/{node}")
                break
            except KubeError:
                if attempt < 2:
                    await asyncio.sleep(0.2)
        if lease is None:
            return Holder("", None, fresh=False)
        endpoint = str(((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION, ""))
        renewed = parse_time(str((lease.get("spec") or {}).get("renewTime") or ""))
        now = dt.datetime.now(dt.UTC)
        fresh = renewed is not None and (now - renewed).total_seconds() < LEASE_DURATION_S
        return Holder(endpoint, renewed, fresh)


def offline_message(node: str, holder: Holder) -> str:
    if holder.renewed is None:
        return f"node {node} is not connected to CloudCore and has never been"
    ago = int((dt.datetime.now(dt.UTC) - holder.renewed).total_seconds())
    return (
        f"node {node} is not connected to CloudCore; it was last connected at "
        f"{holder.renewed.strftime('%Y-%m-%dT%H:%M:%SZ')} ({ago} s ago)"
    )
