"""What edges send up: node registration and status, pod status, pod deletion, and queries.

Every request is checked against the sending node (from its certificate): a node may register and update
only itself, report status only for pods bound to it, and read only the configmaps and secrets its pods
use. Anything else is refused and logged with the node's name. Transient API server errors are retried
with backoff while the session lasts (the edge's outbox keeps the message until it is acked); permanent
refusals are logged and dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from cloudcore.cloudhub import CloudHub
from cloudcore.edgecontroller.placement import EDGE_LABEL, Placement
from cloudcore.kube import MERGE_PATCH, STRATEGIC_PATCH, Kube, KubeError
from common.logging import get_logger
from common.messages import Group, Message, MessageError, NodeName, ObjectUid, Operation, Resource, new_message
from common.protocol.backoff import backoff_delays

log = get_logger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")
DEVICES = "/apis/devices.kubeedge.io/v1beta1"


class Refused(Exception):
    """The node asked for something it is not allowed to; the message says what."""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keep_transition_times(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A condition whose status did not change keeps its lastTransitionTime, as the kubelet does."""
    previous = {c.get("type"): c for c in old}
    out = []
    for condition in new:
        before = previous.get(condition.get("type"))
        if before is not None and before.get("status") == condition.get("status") and before.get("lastTransitionTime"):
            out.append({**condition, "lastTransitionTime": before["lastTransitionTime"]})
        else:
            out.append(condition)
    return out


class Upstream:
    def __init__(self, *, kube: Kube, hub: CloudHub, placement: Placement, now_ms: Callable[[], int]) -> None:
        self._kube = kube
        self._hub = hub
        self._placement = placement
        self._now_ms = now_ms
        self.handled = 0
        self.refused = 0
        # The newest device status this replica wrote, by "ns/name": the watch may not have brought it back
        # yet, and twins are merged into the whole list.
        self._device_status: dict[str, tuple[int, dict[str, Any]]] = {}

    async def __call__(self, node: NodeName, message: Message) -> None:
        route = message.route
        try:
            resource = Resource.parse(route.resource)
        except MessageError:
            log.warning("upstream_unknown", node=node, operation=route.operation, resource=route.resource)
            return
        handler = self._handler(route.operation, resource.type)
        if handler is None:
            log.warning("upstream_unknown", node=node, operation=route.operation, resource=route.resource)
            return
        try:
            await self._retrying(lambda: handler(node, resource, message))
            self.handled += 1
        except Refused as exc:
            self.refused += 1
            log.warning(
                "request_refused", node=node, operation=route.operation, resource=route.resource, reason=str(exc)
            )
            if route.operation == Operation.QUERY:
                await self._respond(node, message, {"error": str(exc)})

    def _handler(self, operation: str, kind: str) -> Callable[[NodeName, Resource, Message], Awaitable[None]] | None:
        handlers: dict[tuple[str, str], Callable[[NodeName, Resource, Message], Awaitable[None]]] = {
            (Operation.INSERT, "node"): self._register,
            (Operation.UPDATE, "node"): self._register,
            (Operation.UPDATE, "nodestatus"): self._node_status,
            (Operation.UPDATE, "podstatus"): self._pod_status,
            (Operation.DELETE, "pod"): self._pod_deleted,
            (Operation.QUERY, "configmap"): self._query,
            (Operation.QUERY, "secret"): self._query,
            (Operation.QUERY, "pod"): self._query,
            (Operation.QUERY, "node"): self._query,
            (Operation.UPDATE, "devicetwin"): self._device_twins,
            (Operation.UPDATE, "devicestate"): self._device_state,
        }
        return handlers.get((operation, kind))

    async def _retrying(self, attempt: Callable[[], Awaitable[None]]) -> None:
        delays = backoff_delays(initial=0.2, cap=5.0)
        while True:
            try:
                await attempt()
            except KubeError as exc:
                if exc.status < 500 and exc.status != 429:
                    log.warning("upstream_rejected_by_api", status=exc.status, error=str(exc))
                    return  # permanent: retrying would get the same answer
                log.info("api_unavailable", error=str(exc))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("api_unavailable", error=str(exc) or type(exc).__name__)
            else:
                return
            await asyncio.sleep(next(delays))

    # --- nodes -------------------------------------------------------------------------------------------

    async def _register(self, node: NodeName, resource: Resource, message: Message) -> None:
        if resource.name != node:
            raise Refused(f"node {node!r} may not register node {resource.name!r}")
        content = message.content if isinstance(message.content, dict) else {}
        labels = {**((content.get("metadata") or {}).get("labels") or {}), EDGE_LABEL: ""}
        try:
            await self._kube.request(
                "POST",
                "/api/v1/nodes",
                body={
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node, "labels": labels},
                },
            )
            log.info("node_registered", node=node)
        except KubeError as exc:
            if exc.status != 409:
                raise
            await self._kube.request(
                "PATCH", f"/api/v1/nodes/{node}", body={"metadata": {"labels": labels}}, content_type=STRATEGIC_PATCH
            )
        if isinstance(content.get("status"), dict):
            await self._patch_node_status(node, content["status"])

    async def _node_status(self, node: NodeName, resource: Resource, message: Message) -> None:
        if resource.name != node:
            raise Refused(f"node {node!r} may not update the status of node {resource.name!r}")
        content = message.content if isinstance(message.content, dict) else {}
        status = content.get("status")
        if not isinstance(status, dict):
            raise Refused("nodestatus without a status object")
        await self._patch_node_status(node, status)

    async def _patch_node_status(self, node: NodeName, status: dict[str, Any]) -> None:
        heartbeat = now_rfc3339()
        current = self._placement.nodes.get(node) or {}
        old_conditions = (current.get("status") or {}).get("conditions") or []
        conditions = [
            {**c, "lastHeartbeatTime": heartbeat, "lastTransitionTime": c.get("lastTransitionTime") or heartbeat}
            for c in status.get("conditions") or []
        ]
        body = {"status": {**status, "conditions": keep_transition_times(conditions, old_conditions)}}
        await self._kube.request("PATCH", f"/api/v1/nodes/{node}/status", body=body, content_type=STRATEGIC_PATCH)

    # --- pods --------------------------------------------------------------------------------------------

    async def _pod_status(self, node: NodeName, resource: Resource, message: Message) -> None:
        content = message.content if isinstance(message.content, dict) else {}
        uid, status = content.get("uid"), content.get("status")
        if not isinstance(uid, str) or not isinstance(status, dict):
            raise Refused("podstatus needs a uid and a status object")
        namespace = resource.namespace or "default"
        pod = self._placement.pod_on(node, namespace, resource.name)
        if pod is None or pod["metadata"]["uid"] != uid:
            if pod is None and self._bound_elsewhere(node, namespace, resource.name):
                raise Refused(f"pod {namespace}/{resource.name} is not bound to node {node!r}")
            # The pod is gone or was recreated under a new UID: the edge's copy is stale, delete it there.
            log.info("pod_status_stale", node=node, resource=str(resource), uid=uid)
            self._hub.reconcile(node, ObjectUid(uid))
            return
        old_conditions = (pod.get("status") or {}).get("conditions") or []
        status = {**status, "conditions": keep_transition_times(status.get("conditions") or [], old_conditions)}
        path = f"/api/v1/namespaces/{namespace}/pods/{resource.name}"
        try:
            await self._kube.request(
                "PATCH",
                f"{path}/status",
                body={"metadata": {"uid": uid}, "status": status},
                content_type=STRATEGIC_PATCH,
            )
        except KubeError as exc:
            if exc.status in (404, 409):  # deleted, or the UID precondition failed meanwhile
                self._hub.reconcile(node, ObjectUid(uid))
                return
            raise
        if pod["metadata"].get("deletionTimestamp") and status.get("phase") in TERMINAL_PHASES:
            await self._finish_deletion(path, uid)

    async def _pod_deleted(self, node: NodeName, resource: Resource, message: Message) -> None:
        """The edge has stopped and removed a pod that is being deleted: complete the deletion."""
        content = message.content if isinstance(message.content, dict) else {}
        uid = (content.get("metadata") or {}).get("uid")
        namespace = resource.namespace or "default"
        pod = self._placement.pod_on(node, namespace, resource.name)
        if pod is None or pod["metadata"]["uid"] != uid:
            return  # already gone
        if not pod["metadata"].get("deletionTimestamp"):
            raise Refused(f"pod {namespace}/{resource.name} is not being deleted")
        await self._finish_deletion(f"/api/v1/namespaces/{namespace}/pods/{resource.name}", uid)

    async def _finish_deletion(self, path: str, uid: str) -> None:
        try:
            await self._kube.request(
                "DELETE",
                path,
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                },
            )
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise

    def _bound_elsewhere(self, node: NodeName, namespace: str, name: str) -> bool:
        key = f"{namespace}/{name}"
        return any(key in pods for other, pods in self._placement.pods.items() if other != node)

    # --- devices -----------------------------------------------------------------------------------------

    def _device(self, node: NodeName, resource: Resource) -> dict[str, Any]:
        namespace = resource.namespace or "default"
        device = self._placement.device_on(node, namespace, resource.name)
        if device is None:
            raise Refused(f"device {namespace}/{resource.name} is not bound to node {node!r}")
        return device

    def _fresh_status(self, device: dict[str, Any]) -> dict[str, Any]:
        key = f"{device['metadata'].get('namespace')}/{device['metadata']['name']}"
        cached_rv = int(device["metadata"]["resourceVersion"])
        written = self._device_status.get(key)
        if written is not None and written[0] > cached_rv:
            return written[1]
        return device.get("status") or {}

    async def _patch_device_status(self, device: dict[str, Any], status: dict[str, Any]) -> None:
        m = device["metadata"]
        path = f"{DEVICES}/namespaces/{m.get('namespace', 'default')}/devices/{m['name']}/status"
        updated = await self._kube.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)
        self._device_status[f"{m.get('namespace')}/{m['name']}"] = (
            int(updated["metadata"]["resourceVersion"]),
            updated.get("status") or {},
        )

    async def _device_twins(self, node: NodeName, resource: Resource, message: Message) -> None:
        """Reported twins from the edge, merged into Device status.twins by propertyName."""
        device = self._device(node, resource)
        content = message.content if isinstance(message.content, dict) else {}
        twins = content.get("twins")
        if not isinstance(twins, list) or not all(isinstance(t, dict) and t.get("propertyName") for t in twins):
            raise Refused("devicetwin needs a list of twins with a propertyName each")
        properties = {p.get("name") for p in (device.get("spec") or {}).get("properties") or []}
        unknown = sorted(t["propertyName"] for t in twins if t["propertyName"] not in properties)
        if unknown:
            raise Refused(f"device {resource.namespace}/{resource.name} has no properties {unknown}")
        merged = {t["propertyName"]: t for t in self._fresh_status(device).get("twins") or []}
        merged.update({t["propertyName"]: t for t in twins})
        await self._patch_device_status(device, {"twins": sorted(merged.values(), key=lambda t: t["propertyName"])})

    async def _device_state(self, node: NodeName, resource: Resource, message: Message) -> None:
        device = self._device(node, resource)
        content = message.content if isinstance(message.content, dict) else {}
        state = content.get("state")
        if not isinstance(state, str):
            raise Refused("devicestate needs a state string")
        status = {"state": state}
        if isinstance(content.get("lastOnlineTime"), str):
            status["lastOnlineTime"] = content["lastOnlineTime"]
        await self._patch_device_status(device, status)

    # --- queries -----------------------------------------------------------------------------------------

    async def _query(self, node: NodeName, resource: Resource, message: Message) -> None:
        namespace = resource.namespace or "default"
        if resource.type == "node":
            if resource.name != node:
                raise Refused(f"node {node!r} may not read node {resource.name!r}")
            answer = self._placement.nodes.get(node)
        elif resource.type == "pod":
            answer = self._placement.pod_on(node, namespace, resource.name)
            if answer is None:
                raise Refused(f"pod {namespace}/{resource.name} is not bound to node {node!r}")
        else:
            if not self._placement.may_read(node, resource.type, namespace, resource.name):
                raise Refused(f"no pod on node {node!r} uses {resource.type} {namespace}/{resource.name}")
            cache = self._placement.configmaps if resource.type == "configmap" else self._placement.secrets
            answer = cache.get((namespace, resource.name))
        await self._respond(node, message, answer if answer is not None else {"error": "not found"})

    async def _respond(self, node: NodeName, query: Message, content: Any) -> None:
        response = new_message(
            source="edgecontroller",
            group=Group.RESOURCE,
            operation=Operation.RESPONSE,
            resource=query.route.resource,
            content=content,
            now_ms=self._now_ms(),
            parent_msg_id=query.header.msg_id,
        )
        await self._hub.send(node, response)
