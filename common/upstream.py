"""The edge→cloud contract: what EdgeCore sends up, built in one place and parsed in one place.

The edge calls the builders (``pod_status``, ``node_status``, ``twin_reported``, …), which return an
``Upstream``: the route and content of one message plus the outbox key it is the latest value of. CloudCore
calls ``parse`` on every upstream message and dispatches on the typed request it returns; anything unknown or
malformed raises ``UpstreamError`` with a reason that names the problem, before any handler runs.

The wire format is KubeEdge's (``<namespace>/<type>/<name>``, ``null`` for cluster-scoped objects; groups
``resource`` and ``twin``), and it must not change without both sides changing: ``tests/unit/test_upstream.py``
pins a few frames byte for byte. A new message kind is added here, with its builder, its request type and its
branch in ``parse``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from common import fl
from common.messages import Group, Message, MessageError, Operation, Resource, new_message

# Deeper than any real pod or node status (about 6 levels); the cloud's JSON serializer recurses.
MAX_CONTENT_DEPTH = 32


class ResourceType(enum.StrEnum):
    """The ``<type>`` part of a resource string, with KubeEdge's names where KubeEdge has one."""

    NODE = "node"
    NODESTATUS = "nodestatus"
    POD = "pod"
    PODSTATUS = "podstatus"
    CONFIGMAP = "configmap"
    SECRET = "secret"  # noqa: S105 - a resource type, not a password
    DEVICE = "device"
    DEVICEMODEL = "devicemodel"
    DEVICETWIN = "devicetwin"  # reported twin values, edge → cloud
    DEVICESTATE = "devicestate"  # a device's online/offline state, edge → cloud
    SERVICEACCOUNTTOKEN = "serviceaccounttoken"  # a TokenRequest for a pod, asked as a query
    EVENT = "event"  # what happened to a pod or the node, as the kubelet records it
    DATASET = "dataset"  # a Sedna Dataset's status, as the node's data loader found it
    FEDERATEDLEARNINGJOB = "federatedlearningjob"  # a worker's report, as Sedna's LC relays it
    FLTRANSFER = "fltransfer"  # "fetch this blob of weights from me": a federated job's update or model


QUERYABLE = frozenset({ResourceType.NODE, ResourceType.POD, ResourceType.CONFIGMAP, ResourceType.SECRET})


class UpstreamError(ValueError):
    """An upstream message that is not one the contract knows, or whose content has the wrong shape."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A message for the cloud, before the outbox gives it a version; ``key`` names what it is the latest
    value of, so a newer one replaces an undelivered older one."""

    key: str
    group: str
    operation: str
    resource: str
    content: Any


class UpstreamPublisher(Protocol):
    """``EdgeHub.publish``: durable before it returns, all or none, latest value per key."""

    async def __call__(self, *messages: Upstream) -> None: ...


def _resource(namespace: str | None, kind: ResourceType, name: str) -> str:
    return str(Resource(namespace, kind, name))


# --- builders (the edge) -------------------------------------------------------------------------------------


def node_registration(node: str, *, labels: Mapping[str, str], status: dict[str, Any]) -> Upstream:
    """Register the node (or update its labels), with its first status."""
    return Upstream(
        f"node/{node}",
        Group.RESOURCE,
        Operation.INSERT,
        _resource(None, ResourceType.NODE, node),
        {"metadata": {"name": node, "labels": dict(labels)}, "status": status},
    )


def node_status(node: str, status: dict[str, Any]) -> Upstream:
    return Upstream(
        f"nodestatus/{node}",
        Group.RESOURCE,
        Operation.UPDATE,
        _resource(None, ResourceType.NODESTATUS, node),
        {"status": status},
    )


def pod_status(namespace: str, name: str, uid: str, status: dict[str, Any]) -> Upstream:
    return Upstream(
        f"podstatus/{namespace}/{name}",
        Group.RESOURCE,
        Operation.UPDATE,
        _resource(namespace, ResourceType.PODSTATUS, name),
        {"uid": uid, "name": name, "status": status},
    )


def pod_deleted(namespace: str, name: str, uid: str) -> Upstream:
    """The edge has stopped and removed a pod that is being deleted: the cloud may finish the deletion."""
    return Upstream(
        f"pod/{namespace}/{name}/deleted",
        Group.RESOURCE,
        Operation.DELETE,
        _resource(namespace, ResourceType.POD, name),
        {"metadata": {"uid": uid, "name": name, "namespace": namespace}},
    )


def twin_reported(
    namespace: str,
    device: str,
    prop: str,
    *,
    value: str,
    value_type: str,
    timestamp_ms: int,
    observed_desired: str,
) -> Upstream:
    """One property's reported value; keyed per property, so only its latest value travels."""
    return Upstream(
        f"devicetwin/{namespace}/{device}/{prop}",
        Group.TWIN,
        Operation.UPDATE,
        _resource(namespace, ResourceType.DEVICETWIN, device),
        {
            "twins": [
                {
                    "propertyName": prop,
                    "reported": {"value": value, "metadata": {"timestamp": str(timestamp_ms), "type": value_type}},
                    "observedDesired": {"value": observed_desired},
                }
            ]
        },
    )


def device_state(namespace: str, device: str, state: str, *, last_online_time: str) -> Upstream:
    return Upstream(
        f"devicestate/{namespace}/{device}",
        Group.TWIN,
        Operation.UPDATE,
        _resource(namespace, ResourceType.DEVICESTATE, device),
        {"state": state, "lastOnlineTime": last_online_time},
    )


@dataclass(frozen=True, slots=True)
class Involved:
    """The object an event is about: one of the node's pods, or the node."""

    kind: str  # "Pod" or "Node"
    name: str
    uid: str
    namespace: str = ""
    field_path: str = ""  # e.g. spec.containers{web}


EVENT_TYPES = ("Normal", "Warning")
MAX_EVENT_MESSAGE = 1024  # characters; longer ones are cut, as events.k8s.io asks


def event_name(involved: Involved, reason: str, message: str) -> str:
    """The Event's name: the same for repeats of one (object, reason, message), so they count up one Event
    whichever CloudCore replica writes them."""
    digest = hashlib.sha256(f"{involved.uid}/{involved.field_path}/{reason}/{message}".encode()).hexdigest()[:16]
    return f"{involved.name}.{digest}"


def event(
    involved: Involved,
    *,
    reason: str,
    message: str,
    type_: str,
    count: int,
    first_timestamp: str,
    last_timestamp: str,
    host: str,
) -> Upstream:
    """One Event, coalesced: keyed per (object, reason, message), so repeats while offline travel once with
    their count."""
    message = message[:MAX_EVENT_MESSAGE]
    name = event_name(involved, reason, message)
    namespace = involved.namespace or "default"  # node events go to default, as the kubelet's do
    involved_object = {"kind": involved.kind, "name": involved.name, "uid": involved.uid, "apiVersion": "v1"}
    if involved.namespace:
        involved_object["namespace"] = involved.namespace
    if involved.field_path:
        involved_object["fieldPath"] = involved.field_path
    return Upstream(
        f"event/{name}",
        Group.RESOURCE,
        Operation.UPDATE,
        _resource(namespace, ResourceType.EVENT, name),
        {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved_object,
            "reason": reason,
            "message": message,
            "type": type_,
            "count": count,
            "firstTimestamp": first_timestamp,
            "lastTimestamp": last_timestamp,
            "source": {"component": "kubelet", "host": host},
            "reportingComponent": "kubelet",
            "reportingInstance": host,
        },
    )


def token_request(
    namespace: str,
    service_account: str,
    *,
    pod: str,
    pod_uid: str,
    audiences: list[str],
    expiration_seconds: int,
    now_ms: int,
) -> Message:
    """Ask for a service-account token bound to one of the node's pods (a TokenRequest, as KubeEdge sends it);
    the answer is a ``response`` with the TokenRequest's status, or ``{"error": ...}``."""
    return new_message(
        source="edged",
        group=Group.RESOURCE,
        operation=Operation.QUERY,
        resource=_resource(namespace, ResourceType.SERVICEACCOUNTTOKEN, service_account),
        now_ms=now_ms,
        content={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": service_account, "namespace": namespace},
            "spec": {
                "audiences": list(audiences),
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid},
            },
        },
    )


def query(kind: ResourceType, namespace: str | None, name: str, *, now_ms: int, source: str = "edged") -> Message:
    """A best-effort read of one object the node may see; the answer is a ``response`` to its msg_id."""
    if kind not in QUERYABLE:
        raise ValueError(f"{kind} cannot be queried")
    return new_message(
        source=source,
        group=Group.RESOURCE,
        operation=Operation.QUERY,
        resource=_resource(namespace, kind, name),
        now_ms=now_ms,
    )


# --- requests (the cloud) ------------------------------------------------------------------------------------


# --- federated learning (Sedna's LC → GM) --------------------------------------------------------------------

FL_TRANSFER_KINDS = ("update", "model", "join")
MAX_FL_ROUND = 1_000_000


def dataset_status(namespace: str, name: str, status: dict[str, Any]) -> Upstream:
    return Upstream(
        f"dataset/{namespace}/{name}",
        Group.SEDNA,
        Operation.UPDATE,
        _resource(namespace, ResourceType.DATASET, name),
        {"status": status},
    )


def worker_report(namespace: str, job: str, report: dict[str, Any]) -> Upstream:
    """A worker's report (Sedna's ``/sedna/workers/<name>/info`` body); the latest of each worker travels."""
    return Upstream(
        f"flworker/{namespace}/{job}/{report.get('name')}",
        Group.SEDNA,
        Operation.UPDATE,
        _resource(namespace, ResourceType.FEDERATEDLEARNINGJOB, job),
        report,
    )


def fl_transfer(
    namespace: str,
    job: str,
    *,
    kind: str,
    worker: str,
    round_: int,
    transfer: str = "",
    size: int = 0,
    sha256: str = "",
    blob: bytes | None = None,
) -> Upstream:
    """A blob of weights (``kind`` update or model): inside the message when it is small (``blob``, at most
    common.fl.INLINE_MAX), else waiting on this node for the cloud to fetch by its ``transfer`` id; or a worker
    asking for the latest model (``join``). The latest of each (worker, kind) travels."""
    content: dict[str, Any] = {
        "kind": kind,
        "worker": worker,
        "round": round_,
        "id": transfer,
        "size": size,
        "sha256": sha256,
    }
    if blob is not None:
        content["blob"] = fl.encode_blob(blob)
    return Upstream(
        f"fltransfer/{namespace}/{job}/{worker}/{kind}",
        Group.SEDNA,
        Operation.INSERT,
        _resource(namespace, ResourceType.FLTRANSFER, job),
        content,
    )


@dataclass(frozen=True, slots=True)
class DatasetStatus:
    namespace: str
    name: str
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerReport:
    namespace: str
    job: str
    worker: str
    kind: str  # train or aggregate
    status: str  # running, completed or failed
    owner_info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FlTransfer:
    namespace: str
    job: str
    kind: str
    worker: str
    round: int
    id: str  # where the blob waits on the node, when it is not inline
    size: int
    sha256: str
    blob: bytes | None = None  # the blob itself, when it is small enough to travel inline


@dataclass(frozen=True, slots=True)
class NodeRegistration:
    name: str
    labels: dict[str, str]
    status: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PodStatus:
    namespace: str
    name: str
    uid: str
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PodDeleted:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class TwinReported:
    namespace: str
    device: str
    twins: list[dict[str, Any]]  # each with a string ``propertyName``


@dataclass(frozen=True, slots=True)
class DeviceState:
    namespace: str
    device: str
    state: str
    last_online_time: str | None


@dataclass(frozen=True, slots=True)
class Query:
    kind: ResourceType
    namespace: str | None
    name: str


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """A TokenRequest for ``service_account``, to be bound to the pod ``pod`` (``pod_uid``)."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str
    audiences: list[str]
    expiration_seconds: int


@dataclass(frozen=True, slots=True)
class EventReport:
    namespace: str
    name: str
    involved: Involved
    reason: str
    message: str
    type: str
    count: int
    first_timestamp: str
    last_timestamp: str


Request = (
    NodeRegistration
    | NodeStatus
    | PodStatus
    | PodDeleted
    | TwinReported
    | DeviceState
    | Query
    | TokenQuery
    | EventReport
    | DatasetStatus
    | WorkerReport
    | FlTransfer
)

MIN_TOKEN_SECONDS = 600  # the API server's floor for expirationSeconds


def parse(message: Message) -> Request:
    """The typed request an upstream message carries; ``UpstreamError`` names what is wrong with it."""
    route = message.route
    try:
        resource = Resource.parse(route.resource)
    except MessageError as exc:
        raise UpstreamError(str(exc)) from None
    try:
        kind = ResourceType(resource.type)
    except ValueError:
        raise UpstreamError(f"unknown resource type {resource.type!r}") from None
    if route.operation == Operation.QUERY and kind in QUERYABLE:
        return Query(kind, resource.namespace, resource.name)
    if route.operation == Operation.QUERY and kind is ResourceType.SERVICEACCOUNTTOKEN:
        _check_depth(message.content)
        return _token_query(resource.namespace or "default", resource.name, _object(message.content, "content"))
    build = _PARSERS.get((kind, route.operation))
    if build is None:
        raise UpstreamError(f"no upstream message is {route.operation!r} of {kind.value!r}")
    _check_depth(message.content)
    return build(resource.namespace or "default", resource.name, _object(message.content, "content"))


def coalesce_twin_reports(messages: Sequence[Message]) -> list[tuple[Message, list[Message]]]:
    """A batch of upstream messages with the twin reports about each device made one, in the place of the
    first: its twins in the order they came (a property reported twice keeps its later value, since the
    handler merges by propertyName). CloudCore then writes a Device's status once per batch, not once per
    property. Returns each message to handle with the received messages it stands for; anything that is not
    a well-formed twin report passes alone, to be handled (or refused) on its own.
    """
    out: list[tuple[Message, list[Message]]] = []
    twins: dict[str, tuple[int, list[Any]]] = {}  # resource → (its place in out, its twins so far)
    for message in messages:
        route = message.route
        if route.group == Group.TWIN and route.operation == Operation.UPDATE and _is_twin_report(message):
            seen = twins.get(route.resource)
            if seen is not None:
                seen[1].extend(message.content["twins"])
                out[seen[0]][1].append(message)
                continue
            twins[route.resource] = (len(out), list(message.content["twins"]))
        out.append((message, [message]))
    for at, merged in twins.values():
        first, covered = out[at]
        if len(covered) > 1:
            out[at] = (replace(first, content={**first.content, "twins": merged}), covered)
    return out


def _is_twin_report(message: Message) -> bool:
    try:
        return isinstance(parse(message), TwinReported)
    except UpstreamError:
        return False


def _registration(_: str, name: str, content: dict[str, Any]) -> NodeRegistration:
    metadata = _object(content.get("metadata", {}), "content.metadata")
    status = content.get("status")
    return NodeRegistration(
        name,
        _string_map(metadata.get("labels", {}), "content.metadata.labels"),
        _node_status(status) if status is not None else None,
    )


def _node_status_request(_: str, name: str, content: dict[str, Any]) -> NodeStatus:
    return NodeStatus(name, _node_status(content.get("status")))


def _pod_status_request(namespace: str, name: str, content: dict[str, Any]) -> PodStatus:
    return PodStatus(namespace, name, _string(content.get("uid"), "content.uid"), _pod_status(content))


def _pod_deleted_request(namespace: str, name: str, content: dict[str, Any]) -> PodDeleted:
    metadata = _object(content.get("metadata"), "content.metadata")
    return PodDeleted(namespace, name, _string(metadata.get("uid"), "content.metadata.uid"))


def _twin_request(namespace: str, name: str, content: dict[str, Any]) -> TwinReported:
    return TwinReported(namespace, name, _twins(content.get("twins")))


def _state_request(namespace: str, name: str, content: dict[str, Any]) -> DeviceState:
    online = content.get("lastOnlineTime")
    return DeviceState(
        namespace,
        name,
        _string(content.get("state"), "content.state"),
        _string(online, "content.lastOnlineTime") if online is not None else None,
    )


def _token_query(namespace: str, name: str, content: dict[str, Any]) -> TokenQuery:
    spec = _object(content.get("spec"), "content.spec")
    ref = _object(spec.get("boundObjectRef"), "content.spec.boundObjectRef")
    if ref.get("kind") != "Pod":
        raise UpstreamError(f"content.spec.boundObjectRef.kind must be 'Pod', not {ref.get('kind')!r}")
    audiences = spec.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise UpstreamError("content.spec.audiences must be a list of non-empty strings")
    seconds = spec.get("expirationSeconds", 3600)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < MIN_TOKEN_SECONDS:
        raise UpstreamError(f"content.spec.expirationSeconds must be an integer of at least {MIN_TOKEN_SECONDS}")
    return TokenQuery(
        namespace,
        name,
        _string(ref.get("name"), "content.spec.boundObjectRef.name"),
        _string(ref.get("uid"), "content.spec.boundObjectRef.uid"),
        audiences,
        seconds,
    )


def _event_request(namespace: str, name: str, content: dict[str, Any]) -> EventReport:
    involved = _object(content.get("involvedObject"), "content.involvedObject")
    kind = involved.get("kind")
    if kind not in ("Pod", "Node"):
        raise UpstreamError(f"content.involvedObject.kind must be 'Pod' or 'Node', not {kind!r}")
    type_ = content.get("type")
    if type_ not in EVENT_TYPES:
        raise UpstreamError(f"content.type must be one of {list(EVENT_TYPES)}, not {type_!r}")
    count = content.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UpstreamError("content.count must be a positive integer")
    message = content.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_EVENT_MESSAGE:
        raise UpstreamError(f"content.message must be a string of at most {MAX_EVENT_MESSAGE} characters")
    field_path = involved.get("fieldPath", "")
    if not isinstance(field_path, str):
        raise UpstreamError("content.involvedObject.fieldPath must be a string")
    target = Involved(
        kind,
        _string(involved.get("name"), "content.involvedObject.name"),
        _string(involved.get("uid"), "content.involvedObject.uid"),
        namespace if kind == "Pod" else "",
        field_path,
    )
    return EventReport(
        namespace,
        name,
        target,
        _string(content.get("reason"), "content.reason"),
        message,
        type_,
        count,
        _string(content.get("firstTimestamp"), "content.firstTimestamp"),
        _string(content.get("lastTimestamp"), "content.lastTimestamp"),
    )


def _dataset_request(namespace: str, name: str, content: dict[str, Any]) -> DatasetStatus:
    status = _object(content.get("status"), "content.status")
    samples = status.get("numberOfSamples", 0)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise UpstreamError("content.status.numberOfSamples must be a non-negative integer")
    return DatasetStatus(namespace, name, status)


def _worker_request(namespace: str, job: str, content: dict[str, Any]) -> WorkerReport:
    kind, status = content.get("kind"), content.get("status")
    if kind not in ("train", "aggregate"):
        raise UpstreamError(f"content.kind must be 'train' or 'aggregate', not {kind!r}")
    if status not in ("running", "completed", "failed"):
        raise UpstreamError(f"content.status must be running, completed or failed, not {status!r}")
    return WorkerReport(
        namespace,
        job,
        _string(content.get("name"), "content.name"),
        kind,
        status,
        _object(content.get("ownerInfo", {}), "content.ownerInfo"),
    )


def _int_in(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UpstreamError(f"{where} must be an integer from {low} to {high}")
    return value


def _transfer_request(namespace: str, job: str, content: dict[str, Any]) -> FlTransfer:
    kind = content.get("kind")
    if kind not in FL_TRANSFER_KINDS:
        raise UpstreamError(f"content.kind must be one of {list(FL_TRANSFER_KINDS)}, not {kind!r}")
    transfer, sha = content.get("id", ""), content.get("sha256", "")
    if not isinstance(transfer, str) or not isinstance(sha, str) or len(transfer) > 300 or len(sha) > 64:
        raise UpstreamError("content.id and content.sha256 must be short strings")
    blob = None
    if "blob" in content:
        try:
            blob = fl.decode_blob(content["blob"], sha, "content.blob")
        except fl.TransferError as exc:
            raise UpstreamError(str(exc)) from None
    if kind != "join" and not ((transfer or blob is not None) and len(sha) == 64):
        raise UpstreamError(
            f"a transfer of kind {kind!r} needs content.id (or content.blob) and a 64-digit content.sha256"
        )
    return FlTransfer(
        namespace,
        job,
        kind,
        _string(content.get("worker"), "content.worker"),
        _int_in(content.get("round"), "content.round", -1, MAX_FL_ROUND),
        transfer,
        _int_in(content.get("size", 0), "content.size", 0, 1 << 40),
        sha,
        blob,
    )


_PARSERS: dict[tuple[ResourceType, str], Callable[[str, str, dict[str, Any]], Request]] = {
    (ResourceType.NODE, Operation.INSERT): _registration,
    (ResourceType.NODE, Operation.UPDATE): _registration,
    (ResourceType.NODESTATUS, Operation.UPDATE): _node_status_request,
    (ResourceType.PODSTATUS, Operation.UPDATE): _pod_status_request,
    (ResourceType.POD, Operation.DELETE): _pod_deleted_request,
    (ResourceType.DEVICETWIN, Operation.UPDATE): _twin_request,
    (ResourceType.DEVICESTATE, Operation.UPDATE): _state_request,
    (ResourceType.EVENT, Operation.UPDATE): _event_request,
    (ResourceType.DATASET, Operation.UPDATE): _dataset_request,
    (ResourceType.FEDERATEDLEARNINGJOB, Operation.UPDATE): _worker_request,
    (ResourceType.FLTRANSFER, Operation.INSERT): _transfer_request,
}


# --- shapes --------------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_depth(content: object) -> None:
    """Refuse content nested deeper than MAX_CONTENT_DEPTH, without recursing (it may be deep on purpose)."""
    stack: list[tuple[object, int]] = [(content, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONTENT_DEPTH:
            raise UpstreamError(f"content is nested deeper than {MAX_CONTENT_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UpstreamError(f"{where} must be an object, not {_kind(value)}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UpstreamError(f"{where} must be a non-empty string, not {_kind(value)}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    mapping = _object(value, where)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise UpstreamError(f"{where}.{key} must be a string, not {_kind(item)}")
    return mapping


def _objects(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise UpstreamError(f"{where} must be a list, not {_kind(value)}")
    for i, item in enumerate(value):
        _object(item, f"{where}[{i}]")
    return value


def _conditions(status: dict[str, Any], where: str) -> None:
    for i, condition in enumerate(_objects(status.get("conditions", []), f"{where}.conditions")):
        for key in ("type", "status"):
            _string(condition.get(key), f"{where}.conditions[{i}].{key}")


def _node_status(value: object) -> dict[str, Any]:
    status = _object(value, "content.status")
    _conditions(status, "content.status")
    _objects(status.get("addresses", []), "content.status.addresses")
    for key in ("capacity", "allocatable"):
        _string_map(status.get(key, {}), f"content.status.{key}")
    return status


def _pod_status(content: dict[str, Any]) -> dict[str, Any]:
    status = _object(content.get("status"), "content.status")
    _conditions(status, "content.status")
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        _objects(status.get(key, []), f"content.status.{key}")
    phase = status.get("phase")
    if phase is not None:
        _string(phase, "content.status.phase")
    return status


def _twins(value: object) -> list[dict[str, Any]]:
    twins = _objects(value, "content.twins")
    if not twins:
        raise UpstreamError("content.twins must not be empty")
    for i, twin in enumerate(twins):
        _string(twin.get("propertyName"), f"content.twins[{i}].propertyName")
    return twins
