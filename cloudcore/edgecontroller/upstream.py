"""What edges send up: node registration and status, pod status, pod deletion, device twins, and queries.

Every message is parsed by the one contract (``common.upstream.parse``) before anything happens; what it
refuses is logged with the node and the reason. Every request is then checked against the sending node (from
its certificate): a node may register and update only itself, report status only for pods bound to it, and
read only the configmaps and secrets its pods use. Anything else is refused and logged with the node's name.

API failures are retried per message with backoff while they may pass (``retryable``: no answer, 5xx, 429),
at most ``attempts`` times, so one message the API server keeps failing does not hold up the node's later
messages for ever; other refusals are logged and dropped. Nodes are served independently (one consumer per
session), so a slow request for one node never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudcore import config
from cloudcore.cloudhub import CloudHub
from cloudcore.edgecontroller.placement import EDGE_LABEL, Placement
from cloudcore.kube import MERGE_PATCH, STRATEGIC_PATCH, ApiError, Conflict, Kube, KubeError, NotFound, retryable
from common import upstream as contract
from common.logging import Throttle, get_logger
from common.messages import Group, Message, NodeName, ObjectUid, Operation, new_message
from common.nodelabels import forbidden_labels
from common.protocol.backoff import backoff_delays
from common.protocol.versions import is_newer

log = get_logger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")
DEVICES = "/apis/devices.kubeedge.io/v1beta1"
POD_CONDITIONS_KEPT = 2048  # pods whose last written conditions are kept (a few seconds of status reports)


class Refused(Exception):
    """The node asked for something it is not allowed to; the message says what."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often one upstream message is tried while the API server fails it in a way that may pass."""

    attempts: int = 6
    initial_delay: float = 0.2
    max_delay: float = 5.0

    @classmethod
    def from_config(cls, controller: config.EdgeController) -> RetryPolicy:
        return cls(attempts=controller.upstream_attempts, max_delay=controller.upstream_max_backoff)


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
    def __init__(
        self,
        *,
        kube: Kube,
        hub: CloudHub,
        placement: Placement,
        now_ms: Callable[[], int],
        retry: RetryPolicy | None = None,
        kubelet_port: int | None = None,
    ) -> None:
        self._kube = kube
        self._hub = hub
        self._placement = placement
        self._now_ms = now_ms
        self._retry = retry or RetryPolicy()
        # Where the API server reaches an edge node's "kubelet": CloudCore's stream server (see cloudstream).
        self._kubelet_port = kubelet_port
        self.handled = 0
        self.refused = 0
        self.malformed = 0
        self.gave_up = 0  # messages dropped after every attempt failed
        self._throttle = Throttle()  # what one node can make us log is bounded
        # The newest device status this replica wrote, by "ns/name": the watch may not have brought it back
        # yet, and twins are merged into the whole list.
        self._device_status: dict[str, tuple[int, dict[str, Any]]] = {}
        # The pod conditions this replica last wrote (resourceVersion, conditions), by pod UID, oldest first: a
        # report that follows within the watch's lag must not be compared with the cache's older conditions,
        # or it resets a lastTransitionTime. Bounded, since past a few seconds of writes the cache has caught up.
        self._pod_conditions: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        # Sedna's reports (Datasets, workers, weights to carry) go to the global manager, when it runs.
        self.learning: Callable[[NodeName, contract.Request], Awaitable[None]] | None = None

    async def __call__(self, node: NodeName, message: Message) -> None:
        route = message.route
        try:
            request = contract.parse(message)
        except contract.UpstreamError as exc:
            self.malformed += 1
            if (suppressed := self._throttle.admit((node, "upstream_rejected"))) is not None:
                log.warning(
                    "upstream_rejected",
                    node=node,
                    operation=route.operation,
                    resource=route.resource[:200],
                    reason=str(exc),
                    suppressed=suppressed,
                )
            if route.operation == Operation.QUERY:
                await self._respond(node, message, {"error": str(exc)})
            return
        try:
            await self._retrying(node, message, lambda: self._dispatch(node, request, message))
            self.handled += 1
        except Refused as exc:
            self.refused += 1
            if (suppressed := self._throttle.admit((node, "request_refused"))) is not None:
                log.warning(
                    "request_refused",
                    node=node,
                    operation=route.operation,
                    resource=route.resource,
                    reason=str(exc),
                    suppressed=suppressed,
                )
            if isinstance(request, contract.Query | contract.TokenQuery):
                await self._respond(node, message, {"error": str(exc)})

    async def _dispatch(self, node: NodeName, request: contract.Request, message: Message) -> None:
        match request:
            case contract.NodeRegistration():
                await self._register(node, request)
            case contract.NodeStatus():
                await self._node_status(node, request)
            case contract.PodStatus():
                await self._pod_status(node, request)
            case contract.PodDeleted():
                await self._pod_deleted(node, request)
            case contract.TwinReported():
                await self._device_twins(node, request)
            case contract.DeviceState():
                await self._device_state(node, request)
            case contract.Query():
                await self._query(node, request, message)
            case contract.TokenQuery():
                await self._token(node, request, message)
            case contract.EventReport():
                await self._event(node, request)
            case contract.DatasetStatus() | contract.WorkerReport() | contract.FlTransfer():
                if self.learning is None:
                    raise Refused("federated learning is off in this CloudCore (modules.globalManager)")
                await self.learning(node, request)

    async def _retrying(self, node: NodeName, message: Message, attempt: Callable[[], Awaitable[None]]) -> None:
        policy = self._retry
        delays = backoff_delays(initial=policy.initial_delay, cap=policy.max_delay)
        for tried in range(1, policy.attempts + 1):
            try:
                await attempt()
            except KubeError as exc:
                if not retryable(exc):
                    status = exc.status if isinstance(exc, ApiError) else None
                    if (suppressed := self._throttle.admit((node, "upstream_rejected_by_api"))) is not None:
                        log.warning(
                            "upstream_rejected_by_api", node=node, status=status, error=str(exc), suppressed=suppressed
                        )
                    return  # permanent: retrying would get the same answer
                if tried == policy.attempts:
                    self.gave_up += 1
                    log.error(  # noqa: TRY400 - the API's answer is the story, not our stack
                        "upstream_gave_up",
                        node=node,
                        operation=message.route.operation,
                        resource=message.route.resource,
                        attempts=tried,
                        error=str(exc),
                    )
                    return
                log.info("api_unavailable", node=node, attempt=tried, error=str(exc))
            else:
                return
            await asyncio.sleep(next(delays))

    # --- nodes -------------------------------------------------------------------------------------------

    async def _register(self, node: NodeName, request: contract.NodeRegistration) -> None:
        if request.name != node:
            raise Refused(f"node {node!r} may not register node {request.name!r}")
        forbidden = forbidden_labels(node, request.labels)
        if forbidden:  # NodeRestriction's rules: the whole registration is refused, nothing half-applied
            raise Refused(f"node {node!r} may not set these labels on itself: {', '.join(forbidden)}")
        labels = {**request.labels, EDGE_LABEL: ""}
        try:
            await self._kube.request(
                "POST",
                "/api/v1/nodes",
                body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}},
            )
            log.info("node_registered", node=node)
        except Conflict:
            await self._kube.request(
                "PATCH", f"/api/v1/nodes/{node}", body={"metadata": {"labels": labels}}, content_type=STRATEGIC_PATCH
            )
        if request.status is not None:
            await self._patch_node_status(node, request.status)

    async def _node_status(self, node: NodeName, request: contract.NodeStatus) -> None:
        if request.name != node:
            raise Refused(f"node {node!r} may not update the status of node {request.name!r}")
        await self._patch_node_status(node, request.status)

    async def _patch_node_status(self, node: NodeName, status: dict[str, Any]) -> None:
        heartbeat = now_rfc3339()
        current = self._placement.nodes.get(node) or {}
        old_conditions = (current.get("status") or {}).get("conditions") or []
        conditions = [
            {**c, "lastHeartbeatTime": heartbeat, "lastTransitionTime": c.get("lastTransitionTime") or heartbeat}
            for c in status.get("conditions") or []
        ]
        body = {"status": {**status, "conditions": keep_transition_times(conditions, old_conditions)}}
        if self._kubelet_port is not None:
            body["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self._kubelet_port}}
        await self._kube.request("PATCH", f"/api/v1/nodes/{node}/status", body=body, content_type=STRATEGIC_PATCH)

    # --- pods --------------------------------------------------------------------------------------------

    async def _pod_status(self, node: NodeName, request: contract.PodStatus) -> None:
        namespace, name, uid = request.namespace, request.name, request.uid
        pod = self._placement.pod_on(node, namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid:
            if pod is None and self._bound_elsewhere(node, namespace, name):
                raise Refused(f"pod {namespace}/{name} is not bound to node {node!r}")
            # The pod is gone or was recreated under a new UID: the edge's copy is stale, delete it there.
            log.info("pod_status_stale", node=node, pod=f"{namespace}/{name}", uid=uid)
            self._hub.reconcile(node, ObjectUid(uid))
            return
        old_conditions = self._conditions_before(uid, pod)
        status = {
            **request.status,
            "conditions": keep_transition_times(request.status.get("conditions") or [], old_conditions),
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        try:
            patched = await self._kube.request(
                "PATCH",
                f"{path}/status",
                body={"metadata": {"uid": uid}, "status": status},
                content_type=STRATEGIC_PATCH,
            )
        except (NotFound, Conflict):  # deleted, or the UID precondition failed meanwhile
            self._pod_conditions.pop(uid, None)
            self._hub.reconcile(node, ObjectUid(uid))
            return
        self._remember_conditions(uid, patched)
        if pod["metadata"].get("deletionTimestamp") and status.get("phase") in TERMINAL_PHASES:
            await self._finish_deletion(path, uid)

    def _conditions_before(self, uid: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
        written = self._pod_conditions.get(uid)
        if written is not None and is_newer(written[0], str(pod["metadata"].get("resourceVersion", ""))):
            return written[1]
        return list((pod.get("status") or {}).get("conditions") or [])

    def _remember_conditions(self, uid: str, patched: dict[str, Any]) -> None:
        self._pod_conditions.pop(uid, None)  # re-inserted: the newest write goes last
        rv = str(patched["metadata"].get("resourceVersion", ""))
        self._pod_conditions[uid] = (rv, list((patched.get("status") or {}).get("conditions") or []))
        while len(self._pod_conditions) > POD_CONDITIONS_KEPT:
            del self._pod_conditions[next(iter(self._pod_conditions))]

    async def _pod_deleted(self, node: NodeName, request: contract.PodDeleted) -> None:
        """The edge has stopped and removed a pod that is being deleted: complete the deletion."""
        namespace, name = request.namespace, request.name
        pod = self._placement.pod_on(node, namespace, name)
        if pod is None or pod["metadata"]["uid"] != request.uid:
            return  # already gone
        if not pod["metadata"].get("deletionTimestamp"):
            raise Refused(f"pod {namespace}/{name} is not being deleted")
        await self._finish_deletion(f"/api/v1/namespaces/{namespace}/pods/{name}", request.uid)

    async def _finish_deletion(self, path: str, uid: str) -> None:
        with contextlib.suppress(NotFound, Conflict):  # gone already, or replaced by a pod of the same name
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

    def _bound_elsewhere(self, node: NodeName, namespace: str, name: str) -> bool:
        key = f"{namespace}/{name}"
        return any(key in pods for other, pods in self._placement.pods.items() if other != node)

    # --- devices -----------------------------------------------------------------------------------------

    def _device(self, node: NodeName, namespace: str, name: str) -> dict[str, Any]:
        device = self._placement.device_on(node, namespace, name)
        if device is None:
            raise Refused(f"device {namespace}/{name} is not bound to node {node!r}")
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

    async def _device_twins(self, node: NodeName, request: contract.TwinReported) -> None:
        """Reported twins from the edge, merged into Device status.twins by propertyName."""
        device = self._device(node, request.namespace, request.device)
        properties = {p.get("name") for p in (device.get("spec") or {}).get("properties") or []}
        unknown = sorted(t["propertyName"] for t in request.twins if t["propertyName"] not in properties)
        if unknown:
            raise Refused(f"device {request.namespace}/{request.device} has no properties {unknown}")
        merged = {t["propertyName"]: t for t in self._fresh_status(device).get("twins") or []}
        merged.update({t["propertyName"]: t for t in request.twins})
        await self._patch_device_status(device, {"twins": sorted(merged.values(), key=lambda t: t["propertyName"])})

    async def _device_state(self, node: NodeName, request: contract.DeviceState) -> None:
        device = self._device(node, request.namespace, request.device)
        status = {"state": request.state}
        if request.last_online_time is not None:
            status["lastOnlineTime"] = request.last_online_time
        await self._patch_device_status(device, status)

    # --- queries -----------------------------------------------------------------------------------------

    async def _query(self, node: NodeName, request: contract.Query, message: Message) -> None:
        namespace = request.namespace or "default"
        kind, name = request.kind, request.name
        if kind is contract.ResourceType.NODE:
            if name != node:
                raise Refused(f"node {node!r} may not read node {name!r}")
            answer = self._placement.nodes.get(node)
        elif kind is contract.ResourceType.POD:
            answer = self._placement.pod_on(node, namespace, name)
            if answer is None:
                raise Refused(f"pod {namespace}/{name} is not bound to node {node!r}")
        else:
            if not self._placement.may_read(node, kind, namespace, name):
                raise Refused(f"no pod on node {node!r} uses {kind} {namespace}/{name}")
            cache = self._placement.configmaps if kind is contract.ResourceType.CONFIGMAP else self._placement.secrets
            answer = cache.get((namespace, name))
        await self._respond(node, message, answer if answer is not None else {"error": "not found"})

    async def _token(self, node: NodeName, request: contract.TokenQuery, message: Message) -> None:
        """A service-account token for a pod on this node, bound to that pod (so it dies with it), through
        TokenRequest; only for the service account the pod runs as."""
        namespace = request.namespace
        pod = self._placement.pod_on(node, namespace, request.pod)
        if pod is None or pod["metadata"]["uid"] != request.pod_uid:
            raise Refused(f"pod {namespace}/{request.pod} (uid {request.pod_uid}) is not bound to node {node!r}")
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        if account != request.service_account:
            raise Refused(
                f"pod {namespace}/{request.pod} runs as service account {account!r}, not {request.service_account!r}"
            )
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": request.audiences,
                "expirationSeconds": request.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": request.pod, "uid": request.pod_uid},
            },
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        try:
            answer = await self._kube.request("POST", path, body=body)
        except KubeError as exc:  # answered, not retried here: the edge asks again, and keeps its cached token
            await self._respond(node, message, {"error": f"TokenRequest for {namespace}/{account}: {exc}"})
            return
        status = answer.get("status") or {}
        await self._respond(node, message, {"status": status})
        log.info("token_issued", node=node, pod=f"{namespace}/{request.pod}", service_account=account)

    async def _event(self, node: NodeName, request: contract.EventReport) -> None:
        """An Event about the node or one of its pods: created under its coalescing name, or counted up."""
        involved = request.involved
        if involved.kind == "Node":
            if involved.name != node:
                raise Refused(f"node {node!r} may not record events about node {involved.name!r}")
        else:
            pod = self._placement.pod_on(node, request.namespace, involved.name)
            if pod is None or pod["metadata"]["uid"] != involved.uid:
                return  # the pod is gone (or was never this node's): its events go with it
        involved_object = {"apiVersion": "v1", "kind": involved.kind, "name": involved.name, "uid": involved.uid}
        if involved.namespace:
            involved_object["namespace"] = involved.namespace
        if involved.field_path:
            involved_object["fieldPath"] = involved.field_path
        body = {  # built from the checked fields only: nothing else the edge sent reaches the API
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": request.name, "namespace": request.namespace},
            "involvedObject": involved_object,
            "reason": request.reason,
            "message": request.message,
            "type": request.type,
            "count": request.count,
            "firstTimestamp": request.first_timestamp,
            "lastTimestamp": request.last_timestamp,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
        }
        path = f"/api/v1/namespaces/{request.namespace}/events"
        try:
            await self._kube.request("POST", path, body=body)
        except Conflict:  # seen before: the same Event, counted up
            repeat = {"count": request.count, "lastTimestamp": request.last_timestamp, "message": request.message}
            with contextlib.suppress(NotFound):  # expired (events live an hour) between the two calls
                await self._kube.request("PATCH", f"{path}/{request.name}", body=repeat, content_type=MERGE_PATCH)

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
