"""Which objects belong to which edge node, fed into the hub's per-node desired sets.

A node holds its own Node object, the pods bound to it (``spec.nodeName``), the configmaps and secrets
those pods reference through volumes, projected volumes, ``env[].valueFrom``, ``envFrom`` and
``imagePullSecrets``, and the devices bound to it (``spec.nodeName``) with their device models. Every change
recomputes the desired set of the nodes it touches, so a pod that leaves a node, or a reference that goes
away, becomes a delete for that node without special cases.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cloudcore.cloudhub import CloudHub
from cloudcore.informer import DELETED
from common.logging import get_logger
from common.messages import NULL_NAMESPACE, NodeName, ObjectUid
from common.protocol.digest import content_digest
from common.protocol.downstream import DesiredObject

log = get_logger(__name__)

EDGE_LABEL = "node-role.kubernetes.io/edge"
Ref = tuple[str, str, str]  # (kind, namespace, name), kind "configmap", "secret" or "devicemodel"
STATUS_FROM_EDGE = ("pod", "node", "device")  # the edge reports their status; it is not sent down


def pod_refs(pod: dict[str, Any]) -> set[Ref]:
    """The configmaps and secrets a pod needs at the edge."""
    namespace = pod["metadata"].get("namespace", "default")
    spec = pod.get("spec") or {}
    refs: set[Ref] = set()

    def add(kind: str, name: str | None) -> None:
        if name:
            refs.add((kind, namespace, name))

    for volume in spec.get("volumes") or []:
        add("configmap", (volume.get("configMap") or {}).get("name"))
        add("secret", (volume.get("secret") or {}).get("secretName"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            add("configmap", (source.get("configMap") or {}).get("name"))
            add("secret", (source.get("secret") or {}).get("name"))
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in [*containers, *(spec.get("ephemeralContainers") or [])]:
        for env in container.get("env") or []:
            value_from = env.get("valueFrom") or {}
            add("configmap", (value_from.get("configMapKeyRef") or {}).get("name"))
            add("secret", (value_from.get("secretKeyRef") or {}).get("name"))
        for env_from in container.get("envFrom") or []:
            add("configmap", (env_from.get("configMapRef") or {}).get("name"))
            add("secret", (env_from.get("secretRef") or {}).get("name"))
    for pull in spec.get("imagePullSecrets") or []:
        add("secret", pull.get("name"))
    return refs


def _without(obj: dict[str, Any], *, status: bool) -> dict[str, Any]:
    """What goes down: no managedFields (bulk nobody at the edge reads), and no status for pods and nodes
    (the edge is where status comes from) but a pod's readiness-gate conditions."""
    out = {k: v for k, v in obj.items() if not (status and k == "status")}
    gates = {g.get("conditionType") for g in (obj.get("spec") or {}).get("readinessGates") or []}
    if status and gates:  # except the readiness-gate conditions others set: the edge computes Ready from them
        conditions = (obj.get("status") or {}).get("conditions") or []
        out["status"] = {"conditions": [c for c in conditions if c.get("type") in gates]}
    metadata = obj.get("metadata") or {}
    if "managedFields" in metadata:
        out["metadata"] = {k: v for k, v in metadata.items() if k != "managedFields"}
    return out


def desired(kind: str, obj: dict[str, Any]) -> DesiredObject:
    content = _without(obj, status=kind in STATUS_FROM_EDGE)
    metadata = obj["metadata"]
    namespace = metadata.get("namespace") or NULL_NAMESPACE
    return DesiredObject(
        ObjectUid(metadata["uid"]),
        str(metadata["resourceVersion"]),
        f"{namespace}/{kind}/{metadata['name']}",
        content,
        digest=_digest(content),
    )


def _digest(content: dict[str, Any]) -> str:
    """content_digest leaves status out (the edge's own reports must not resend a pod); the readiness-gate
    conditions a pod carries down are the one status the edge is sent, so they count. (The edge digests its
    copy without them: a reconnect resends such pods, the only cost.)"""
    gates = (content.get("status") or {}).get("conditions")
    return content_digest({**content, "readinessGateConditions": gates} if gates else content)


class Placement:
    """Keeps every edge node's desired set in the hub current, from the informers' events."""

    def __init__(self, hub: CloudHub) -> None:
        self._hub = hub
        self.nodes: dict[NodeName, dict[str, Any]] = {}  # edge nodes only
        self.pods: dict[NodeName, dict[str, dict[str, Any]]] = {}  # node → "ns/name" → pod
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.devices: dict[NodeName, dict[str, dict[str, Any]]] = {}  # node → "ns/name" → device
        self.devicemodels: dict[tuple[str, str], dict[str, Any]] = {}
        self.datasets: dict[NodeName, dict[str, dict[str, Any]]] = {}  # node → "ns/name" → Sedna Dataset
        self._ref_nodes: dict[Ref, set[NodeName]] = {}  # which nodes hold each configmap/secret
        self._node_refs: dict[NodeName, set[Ref]] = {}
        self._built: dict[str, DesiredObject] = {}  # uid → the last DesiredObject built, reused while its rv holds

    # --- informer handlers -------------------------------------------------------------------------------

    def on_node(self, kind: str, node: dict[str, Any], before: dict[str, Any] | None) -> None:
        name = NodeName(node["metadata"]["name"])
        if kind == DELETED or EDGE_LABEL not in (node["metadata"].get("labels") or {}):
            if self.nodes.pop(name, None) is not None:
                self._built.pop(node["metadata"]["uid"], None)
                log.info("edge_node_removed", node=name)
                self._sync(name)
            return
        if name not in self.nodes:
            log.info("edge_node_added", node=name)
        self.nodes[name] = node
        self._sync(name)

    def on_pod(self, kind: str, pod: dict[str, Any], before: dict[str, Any] | None) -> None:
        key = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
        touched: set[NodeName] = set()
        old_node = (before.get("spec") or {}).get("nodeName") if before is not None else None
        if old_node and self.pods.get(old_node, {}).pop(key, None) is not None:
            touched.add(NodeName(old_node))
        if kind == DELETED:
            self._built.pop(pod["metadata"]["uid"], None)
        node = (pod.get("spec") or {}).get("nodeName")
        if kind != DELETED and node:
            self.pods.setdefault(NodeName(node), {})[key] = pod
            touched.add(NodeName(node))
        for name in touched:
            if name in self.nodes:
                self._sync(name)

    def on_device(self, kind: str, device: dict[str, Any], before: dict[str, Any] | None) -> None:
        self._on_bound(self.devices, kind, device, before)

    def on_dataset(self, kind: str, dataset: dict[str, Any], before: dict[str, Any] | None) -> None:
        """A Sedna Dataset goes to its node (``spec.nodeName``), whose data loader brings its data there."""
        self._on_bound(self.datasets, kind, dataset, before)

    def _on_bound(
        self,
        cache: dict[NodeName, dict[str, dict[str, Any]]],
        kind: str,
        obj: dict[str, Any],
        before: dict[str, Any] | None,
    ) -> None:
        """An object bound to one node by its ``spec.nodeName`` (a device, a Dataset)."""
        key = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
        touched: set[NodeName] = set()
        old_node = (before.get("spec") or {}).get("nodeName") if before is not None else None
        if old_node and cache.get(old_node, {}).pop(key, None) is not None:
            touched.add(NodeName(old_node))
        if kind == DELETED:
            self._built.pop(obj["metadata"]["uid"], None)
        node = (obj.get("spec") or {}).get("nodeName")
        if kind != DELETED and node:
            cache.setdefault(NodeName(node), {})[key] = obj
            touched.add(NodeName(node))
        for name in touched:
            if name in self.nodes:
                self._sync(name)

    def on_devicemodel(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        self._on_referenced("devicemodel", self.devicemodels, kind, obj)

    def device_on(self, node: NodeName, namespace: str, name: str) -> dict[str, Any] | None:
        """The device, if it is bound to ``node``."""
        return self.devices.get(node, {}).get(f"{namespace}/{name}")

    def on_configmap(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        self._on_referenced("configmap", self.configmaps, kind, obj)

    def on_secret(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        self._on_referenced("secret", self.secrets, kind, obj)

    def _on_referenced(
        self, ref_kind: str, cache: dict[tuple[str, str], dict[str, Any]], kind: str, obj: dict[str, Any]
    ) -> None:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if kind == DELETED:
            cache.pop(key, None)
            self._built.pop(obj["metadata"]["uid"], None)
        else:
            cache[key] = obj
        for node in list(self._ref_nodes.get((ref_kind, *key), ())):
            self._sync(node)

    # --- questions the upstream side asks ----------------------------------------------------------------

    def pod_on(self, node: NodeName, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, if it is bound to ``node``."""
        return self.pods.get(node, {}).get(f"{namespace}/{name}")

    def node_of_pod(self, namespace: str, name: str) -> NodeName | None:
        """The edge node a pod is bound to, if it is bound to one."""
        key = f"{namespace}/{name}"
        return next((node for node, pods in self.pods.items() if key in pods and node in self.nodes), None)

    def nodes_at(self, address: str) -> list[NodeName]:
        """The edge nodes that report ``address`` among their status.addresses."""
        return sorted(
            name
            for name, node in self.nodes.items()
            if any(a.get("address") == address for a in (node.get("status") or {}).get("addresses") or [])
        )

    def may_read(self, node: NodeName, ref_kind: str, namespace: str, name: str) -> bool:
        """Node authorization: a node may read a configmap or secret only if one of its pods uses it."""
        return (ref_kind, namespace, name) in self._node_refs.get(node, set())

    # --- the desired set of one node ---------------------------------------------------------------------

    def _sync(self, node: NodeName) -> None:
        if node not in self.nodes:
            self._set_refs(node, set())
            self._hub.set_objects(node, [])
            return
        pods = list(self.pods.get(node, {}).values())
        devices = list(self.devices.get(node, {}).values())
        refs: set[Ref] = set()
        for pod in pods:
            refs |= pod_refs(pod)
        for device in devices:
            model = ((device.get("spec") or {}).get("deviceModelRef") or {}).get("name")
            if model:
                refs.add(("devicemodel", device["metadata"].get("namespace", "default"), model))
        self._set_refs(node, refs)
        bound = [("pod", pod) for pod in pods] + [("device", device) for device in devices]
        bound += [("dataset", dataset) for dataset in self.datasets.get(node, {}).values()]
        self._hub.set_objects(node, self._objects(node, bound, refs))

    def _objects(
        self, node: NodeName, bound: list[tuple[str, dict[str, Any]]], refs: set[Ref]
    ) -> Iterable[DesiredObject]:
        yield self._desired("node", self.nodes[node])
        for kind, obj in bound:
            yield self._desired(kind, obj)
        caches = {"configmap": self.configmaps, "secret": self.secrets, "devicemodel": self.devicemodels}
        for ref_kind, namespace, name in refs:
            referenced = caches[ref_kind].get((namespace, name))
            if referenced is not None:  # referenced but absent: it goes down when it is created
                yield self._desired(ref_kind, referenced)

    def _desired(self, kind: str, obj: dict[str, Any]) -> DesiredObject:
        """``desired()``, computed once per resourceVersion: every event re-lists the node's objects."""
        uid, rv = obj["metadata"]["uid"], str(obj["metadata"]["resourceVersion"])
        built = self._built.get(uid)
        if built is None or built.resource_version != rv:
            built = self._built[uid] = desired(kind, obj)
        return built

    def _set_refs(self, node: NodeName, refs: set[Ref]) -> None:
        old = self._node_refs.get(node, set())
        for ref in old - refs:
            holders = self._ref_nodes.get(ref)
            if holders is not None:
                holders.discard(node)
                if not holders:
                    del self._ref_nodes[ref]
        for ref in refs - old:
            self._ref_nodes.setdefault(ref, set()).add(node)
        if refs:
            self._node_refs[node] = refs
        else:
            self._node_refs.pop(node, None)
