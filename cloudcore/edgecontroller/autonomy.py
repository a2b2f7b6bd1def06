"""Pods on edge nodes outlive a disconnect: they tolerate the not-ready and unreachable taints for ever.

When an edge loses its link, its lease stops being renewed, the node-lifecycle controller marks the node
NotReady and taints it ``node.kubernetes.io/unreachable:NoExecute``, and after each pod's
``tolerationSeconds`` (300 s, added to every pod by the DefaultTolerationSeconds admission) the taint-eviction
controller deletes the pod. The edge, meanwhile, kept running it offline, as designed; when it comes back it
would receive the deletion and kill a pod that was fine. That is KubeEdge's and OpenYurt's autonomy problem.

The answer here is OpenYurt's, applied when it is needed: as soon as an edge node is at risk (it carries the
``unreachable`` or ``not-ready`` NoExecute taint, or its Ready condition is not True), every pod bound to it
gets NoExecute tolerations of both taints without ``tolerationSeconds`` (the API allows changing
tolerationSeconds of an existing toleration and adding new ones), which cancels the eviction the taint
scheduled; pods bound to a node already at risk get them at once. Pods of healthy nodes are left as they
were created (a pod's spec, and so its ``metadata.generation``, changes only when its node is in trouble).
The taint-eviction controller waits ``tolerationSeconds`` (300 s by default) after the taint before it
deletes anything; CloudCore reacts to the taint within a watch event. A DaemonSet's pods already carry the
tolerations. A pod with the annotation ``edge.kubage.io/autonomy: "false"`` is left alone and evicted as in
any cluster, and ``modules.edgeController.podAutonomy: false`` turns this off for all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcore.informer import DELETED
from cloudcore.kube import MERGE_PATCH, Conflict, Kube, KubeError, NotFound
from common.logging import get_logger
from common.messages import NodeName

log = get_logger(__name__)

OPT_OUT = "edge.kubage.io/autonomy"
TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
QUEUE = 10_000


def protected(tolerations: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``tolerations`` with both taints tolerated for ever (NoExecute); None when they already are."""
    out, changed = [], False
    covered = set()
    for toleration in tolerations:
        key, effect = toleration.get("key"), toleration.get("effect")
        kept = toleration
        if key in TAINTS and effect in ("NoExecute", None, ""):
            covered.add(key)
            if "tolerationSeconds" in toleration:
                kept = {k: v for k, v in toleration.items() if k != "tolerationSeconds"}
                changed = True
        elif not key and toleration.get("operator") == "Exists" and not effect:
            covered.update(TAINTS)  # tolerates every taint already
        out.append(kept)
    for key in TAINTS:
        if key not in covered:
            out.append({"key": key, "operator": "Exists", "effect": "NoExecute"})
            changed = True
    return out if changed else None


def at_risk(node: dict[str, Any]) -> bool:
    """The node is, or is about to be, tainted for eviction: a NoExecute not-ready/unreachable taint, or a Ready
    condition that is not True."""
    taints = (node.get("spec") or {}).get("taints") or []
    if any(t.get("key") in TAINTS and t.get("effect") == "NoExecute" for t in taints):
        return True
    conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    return "Ready" in conditions and conditions["Ready"] != "True"


class Autonomy:
    """Patches the pods of edge nodes at risk that lack the tolerations, one at a time, from the informers."""

    def __init__(
        self, kube: Kube, edge_nodes: dict[NodeName, Any], pods: dict[NodeName, dict[Any, dict[str, Any]]]
    ) -> None:
        self._kube = kube
        self._edge_nodes = edge_nodes  # Placement.nodes: edge nodes by name
        self._pods = pods  # Placement.pods: the pods bound to each node
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.patched = 0
        self.skipped = 0  # queue full: the next event of the pod (or its node) brings it back

    def on_node(self, kind: str, node: dict[str, Any], before: dict[str, Any] | None) -> None:
        """A node that turns at risk: protect every pod it runs."""
        if kind == DELETED or not at_risk(node):
            return
        for pod in list(self._pods.get(NodeName(node["metadata"]["name"]), {}).values()):
            self._consider(pod)

    def on_pod(self, kind: str, pod: dict[str, Any], before: dict[str, Any] | None) -> None:
        if kind == DELETED:
            return
        node = self._edge_nodes.get(NodeName((pod.get("spec") or {}).get("nodeName") or ""))
        if node is not None and at_risk(node):
            self._consider(pod)

    def _consider(self, pod: dict[str, Any]) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        if (pod["metadata"].get("annotations") or {}).get(OPT_OUT) == "false":
            return
        if protected((pod.get("spec") or {}).get("tolerations") or []) is None:
            return
        try:
            self._queue.put_nowait(pod)
        except asyncio.QueueFull:
            self.skipped += 1

    async def run(self) -> None:
        while True:
            pod = await self._queue.get()
            try:
                await self._protect(pod)
            except KubeError as exc:
                log.warning("pod_autonomy_failed", pod=_name(pod), error=str(exc))

    async def _protect(self, pod: dict[str, Any]) -> None:
        tolerations = protected((pod.get("spec") or {}).get("tolerations") or [])
        if tolerations is None:
            return
        m = pod["metadata"]
        path = f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}"
        # The whole list (a toleration has no merge key), on the version seen: a Conflict means a newer version
        # is on its way from the informer, which queues it again.
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}, "spec": {"tolerations": tolerations}}
        try:
            await self._kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)
        except (Conflict, NotFound):
            return
        self.patched += 1
        log.info("pod_autonomy", pod=_name(pod), node=pod["spec"].get("nodeName"))


def _name(pod: dict[str, Any]) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
