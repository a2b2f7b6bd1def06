"""DeviceTwin: the node's devices as mappers see them over MQTT, and their twins kept in SQLite.

Inputs, all handled in order by ``run`` (so the twin table needs no locking):

* the cloud's Device and DeviceModel objects, read from the MetaStore at start and again whenever EdgeHub
  commits a change to one of them (``on_changes``): the node's device list changes are announced on
  ``membership/updated``, a new desired value is stored with a bumped ``desired_version`` and sent to the
  mapper on ``twin/update/delta``;
* mapper requests from the EventBus (``submit``): ``membership/get``, ``twin/update`` (validated; a reported
  value is stored with a bumped ``reported_version``, echoed, documented and sent to the cloud through
  EdgeHub's durable outbox, one key per device property so only the latest value per property travels),
  ``twin/get`` and ``state/update``;
* the EventBus (re)connecting (``on_bus_connection``): desired values not yet reported back are sent again,
  since deltas published while the broker was away were dropped.

Mapper requests waiting together are handled as one batch: validated one by one against the twins kept in
memory, then their reported values stored in one transaction and their upstream messages in another, and only
then the replies published. A mapper that got its ``/result`` can count on the value being on disk.

Invalid requests change nothing: the mapper gets KubeEdge's error payload (400 bad request, 404 unknown
device) on the request's result topic, and the log a ``twin_rejected`` (or ``state_rejected``,
``twin_get_rejected``) line with the device and the reason.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from common import devices as topics
from common import upstream
from common.devices import MAX_PAYLOAD_BYTES, Topic, device_id, error_payload, member, parse_request_topic
from common.logging import get_logger
from common.upstream import Upstream, UpstreamPublisher
from edgecore.devicetwin.store import TwinRow, TwinStore
from edgecore.devicetwin.values import InvalidValue, check_value, wire_value
from edgecore.metamanager.store import Change, MetaStore

log = get_logger(__name__)

MAX_STATE_BYTES = 64
DEVICE_KINDS = ("device", "devicemodel")


LocalPublisher = Callable[[str, dict[str, Any]], None]  # ``EventBus.publish``: to mappers, best effort


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Rejection(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Signal(enum.Enum):
    RELOAD = "reload"  # devices or models changed in the store
    RESEND = "resend"  # the broker connection is back


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes


@dataclass(slots=True)
class _Batch:
    """What a batch of mapper requests changes, applied by ``_commit`` once all of them were checked."""

    reported: dict[tuple[str, str], TwinRow] = field(default_factory=dict)  # by (device, property): the latest
    upstream: dict[str, Upstream] = field(default_factory=dict)  # by outbox key: the latest
    replies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (topic, payload), in order

    def add_upstream(self, message: Upstream) -> None:
        self.upstream.pop(message.key, None)  # re-inserted last: the outbox keeps the order messages were put
        self.upstream[message.key] = message


@dataclass(frozen=True)
class NodeDevice:
    """One of the node's devices, with what validation needs from it and its model."""

    id: str  # <namespace>/<name>
    namespace: str
    name: str
    obj: dict[str, Any]
    model: dict[str, Any] | None
    model_name: str
    properties: dict[str, dict[str, Any]]  # Device.spec.properties by name
    types: dict[str, str]  # DeviceModel property types (INT, FLOAT, ...) by name
    shape: bytes = field(repr=False)  # the membership entry without desired values, to spot updates

    @classmethod
    def build(cls, obj: dict[str, Any], model: dict[str, Any] | None) -> NodeDevice:
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or "default"
        spec = obj.get("spec") or {}
        properties = {p["name"]: p for p in spec.get("properties") or [] if isinstance(p, dict) and p.get("name")}
        model_props = ((model or {}).get("spec") or {}).get("properties") or []
        types = {
            p["name"]: str(p.get("type") or "STRING").upper()
            for p in model_props
            if isinstance(p, dict) and p.get("name")
        }
        entry = member(obj, model)
        entry["spec"] = {
            **entry["spec"],
            "properties": [{k: v for k, v in p.items() if k != "desired"} for p in properties.values()],
        }
        return cls(
            id=device_id(namespace, metadata["name"]),
            namespace=namespace,
            name=metadata["name"],
            obj=obj,
            model=model,
            model_name=str((spec.get("deviceModelRef") or {}).get("name") or ""),
            properties=properties,
            types=types,
            shape=orjson.dumps(entry, option=orjson.OPT_SORT_KEYS),
        )

    def desired(self) -> dict[str, str | None]:
        """Every property's desired value in the spec (None: no desired value)."""
        found: dict[str, str | None] = {}
        for name, prop in self.properties.items():
            value = (prop.get("desired") or {}).get("value")
            if value is None or isinstance(value, str):
                found[name] = value
            elif isinstance(value, bool | int | float):
                found[name] = wire_value(value)
            else:  # not KubeEdge's shape; pass it on as JSON rather than lose it
                found[name] = orjson.dumps(value).decode()
        return found


class DeviceTwin:
    def __init__(
        self,
        *,
        node_name: str,
        store: MetaStore,
        publish_upstream: UpstreamPublisher,
        publish_local: LocalPublisher,
        max_pending: int = 10_000,
        max_batch: int = 256,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.node_name = node_name
        self.store = store
        self.twins = TwinStore(store)
        self._upstream = publish_upstream
        self._local = publish_local
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._now = clock
        self._devices: dict[str, NodeDevice] = {}
        self._rows: dict[str, dict[str, TwinRow]] = {}  # the twin table, by device and property
        self._rows_loaded = False
        self._states: dict[str, str] = {}  # device state as the mapper last reported it
        self._inbox: deque[_Inbound | _Signal] = deque()  # a deque, so run can take a batch off its head
        self._wake = asyncio.Event()
        self._pending = 0  # mapper messages in the inbox
        self._reload_queued = False
        self.loaded = asyncio.Event()
        self.handled = 0
        self.rejected = 0
        self.dropped = 0  # mapper messages refused because the inbox was full

    @property
    def devices(self) -> dict[str, NodeDevice]:
        return dict(self._devices)

    # --- inputs (synchronous, from EdgeHub and the EventBus) ---------------------------------------------

    def submit(self, topic: str, payload: bytes) -> None:
        """A message from the broker; handled in order by ``run``, dropped when too many are waiting."""
        if self._pending >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("devicetwin_overloaded", dropped=self.dropped, pending=self._pending)
            return
        self._pending += 1
        self._put(_Inbound(topic, payload))

    def on_changes(self, changes: list[Change]) -> None:
        """EdgeHub committed cloud changes: re-read devices and models if any of them is one."""
        if self._reload_queued:
            return
        if any(_kind(change.resource) in DEVICE_KINDS for change in changes):
            self._reload_queued = True
            self._put(_Signal.RELOAD)

    def on_bus_connection(self, connected: bool) -> None:
        if connected:
            self._put(_Signal.RESEND)

    # --- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.reload(startup=True)
        while True:
            if not self._inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._inbox.popleft()
            try:
                if item is _Signal.RELOAD:
                    self._reload_queued = False
                    await self.reload()
                elif item is _Signal.RESEND:
                    await self.resend_pending()
                elif isinstance(item, _Inbound):
                    batch = [item]
                    while self._inbox and len(batch) < self._max_batch:
                        head = self._inbox[0]
                        if not isinstance(head, _Inbound):
                            break  # a signal: it runs after this batch, in order
                        self._inbox.popleft()
                        batch.append(head)
                    self._pending -= len(batch)
                    await self.handle_batch([(i.topic, i.payload) for i in batch])
            except Exception:  # one bad input must not stop the others; the store's errors surface here
                log.exception("devicetwin_failed", item=str(item)[:200])

    def _put(self, item: _Inbound | _Signal) -> None:
        self._inbox.append(item)
        self._wake.set()

    # --- devices and desired values ----------------------------------------------------------------------

    async def reload(self, *, startup: bool = False) -> None:
        """Re-read the node's devices and models; announce membership changes and new desired values."""
        models = {
            ((m["metadata"].get("namespace") or "default"), m["metadata"]["name"]): m
            for m in await self.store.list_kind("devicemodel")
        }
        fresh: dict[str, NodeDevice] = {}
        for obj in await self.store.list_kind("device"):
            spec = obj.get("spec") or {}
            if spec.get("nodeName") != self.node_name:
                continue
            namespace = obj["metadata"].get("namespace") or "default"
            model = models.get((namespace, str((spec.get("deviceModelRef") or {}).get("name") or "")))
            device = NodeDevice.build(obj, model)
            fresh[device.id] = device
        old, self._devices = self._devices, fresh
        if not startup:
            added = [d for i, d in fresh.items() if i not in old or old[i].shape != d.shape]
            removed = [d for i, d in old.items() if i not in fresh]
            if added or removed:
                for gone in removed:
                    self._states.pop(gone.id, None)
                self._local(
                    topics.membership_updated(self.node_name),
                    {
                        "event_id": uuid.uuid4().hex,
                        "timestamp": self._now(),
                        "added_devices": [self._member(d) for d in added],
                        "removed_devices": [self._member(d) for d in removed],
                    },
                )
                log.info("membership_updated", added=[d.id for d in added], removed=[d.id for d in removed])
        await self._sync_desired()
        self.loaded.set()

    async def _sync_desired(self) -> None:
        if not self._rows_loaded:
            self._rows = await self.twins.get_all()
            self._rows_loaded = True
        gone = [device for device in self._rows if device not in self._devices]
        if gone:
            await self.twins.delete_devices(gone)
            for device_id in gone:
                del self._rows[device_id]
        now = self._now()
        for device in self._devices.values():
            rows = self._rows.setdefault(device.id, {})
            stale = [prop for prop in rows if prop not in device.properties]
            if stale:
                await self.twins.delete_properties(device.id, stale)
                for prop in stale:
                    del rows[prop]
            delta: dict[str, str] = {}
            for prop, value in device.desired().items():
                row = rows.get(prop)
                if (row.desired if row else None) == value:
                    continue
                changed = await self.twins.set_desired(device.id, prop, value, now)
                if changed is not None:
                    rows[prop] = changed
                    if value is not None:
                        delta[prop] = value
            if delta:
                log.info("desired_changed", device=device.id, properties=sorted(delta))
                self._local(*self._delta(device, delta))

    async def resend_pending(self) -> None:
        """Deltas for desired values the mapper has not reported back yet."""
        for device in self._devices.values():
            delta = {
                prop: row.desired
                for prop, row in self._rows.get(device.id, {}).items()
                if prop in device.properties and row.desired is not None and row.desired != row.reported
            }
            if delta:
                self._local(*self._delta(device, delta))

    def _delta(self, device: NodeDevice, delta: dict[str, str]) -> tuple[str, dict[str, Any]]:
        rows = self._rows.get(device.id, {})
        return topics.twin_update_delta(device.id), {
            "event_id": uuid.uuid4().hex,
            "timestamp": self._now(),
            "twin": {prop: self._msg_twin(device, prop, rows.get(prop)) for prop in device.properties},
            "delta": delta,
        }

    def _member(self, device: NodeDevice) -> dict[str, Any]:
        state = self._states.get(device.id)
        obj = (
            device.obj
            if state is None
            else {**device.obj, "status": {**(device.obj.get("status") or {}), "state": state}}
        )
        return member(obj, device.model)

    def _msg_twin(self, device: NodeDevice, prop: str, row: TwinRow | None) -> dict[str, Any]:
        twin: dict[str, Any] = {"metadata": {"type": device.types.get(prop, "STRING").lower()}}
        if row is not None and row.desired is not None:
            twin["expected"] = {"value": row.desired, "metadata": {"timestamp": row.desired_ts}}
            twin["expected_version"] = {"cloud": row.desired_version, "edge": 0}
        if row is not None and row.reported is not None:
            twin["actual"] = {"value": row.reported, "metadata": {"timestamp": row.reported_ts}}
            twin["actual_version"] = {"cloud": 0, "edge": row.reported_version}
        return twin

    # --- mapper requests ---------------------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        await self.handle_batch([(topic, payload)])

    async def handle_batch(self, requests: Sequence[tuple[str, bytes]]) -> None:
        """Check each request in order, store what the valid ones change, then publish every reply."""
        batch = _Batch()
        for topic, payload in requests:
            self._handle_one(topic, payload, batch)
        try:
            await self._commit(batch)
        except BaseException:
            # Nothing of the batch is known to be stored: forget what it did to the in-memory twins and
            # leave the replies unsent, so the mappers report again (a collect cycle later).
            self._rows = await self.twins.get_all()
            raise
        for topic, reply in batch.replies:
            self._local(topic, reply)

    async def _commit(self, batch: _Batch) -> None:
        if batch.upstream:
            await asyncio.shield(self._upstream(*batch.upstream.values()))
        if batch.reported:
            await asyncio.shield(self.twins.put_reported(list(batch.reported.values())))

    def _handle_one(self, topic: str, payload: bytes, batch: _Batch) -> None:
        request = parse_request_topic(topic)
        if request is None:
            log.debug("mqtt_topic_ignored", topic=topic)
            return
        if request.kind == "membership/get":
            if request.node == self.node_name:
                self._membership_get(_lenient(payload), batch)
            return
        self.handled += 1
        event_id = ""
        try:
            data = _decode(payload)
            event_id = data["event_id"] if isinstance(data.get("event_id"), str) else ""
            device = self._device(request.device)
            if request.kind == "twin/update":
                self._twin_update(device, event_id, data, batch)
            elif request.kind == "twin/get":
                self._twin_get(device, event_id, batch)
            else:
                self._state_update(device, event_id, data, batch)
        except Rejection as exc:
            self._reject(request, event_id, exc.code, exc.reason, batch)
        except Exception:
            log.exception("devicetwin_request_failed", topic=topic)
            self._reject(request, event_id, 500, "internal error", batch)

    def _device(self, device_id: str) -> NodeDevice:
        device = self._devices.get(device_id)
        if device is None:
            raise Rejection(404, f"device {device_id} is not a device of node {self.node_name}")
        return device

    def _reject(self, request: Topic, event_id: str, code: int, reason: str, batch: _Batch) -> None:
        self.rejected += 1
        event = {"twin/update": "twin_rejected", "twin/get": "twin_get_rejected"}.get(request.kind, "state_rejected")
        log.warning(event, device=request.device, code=code, reason=reason)
        result = {
            "twin/update": topics.twin_update_result,
            "twin/get": topics.twin_get_result,
            "state/update": topics.state_update_result,
        }[request.kind]
        batch.replies.append((result(request.device), error_payload(event_id, code, reason, self._now())))

    def _membership_get(self, data: dict[str, Any], batch: _Batch) -> None:
        event_id = data["event_id"] if isinstance(data.get("event_id"), str) else ""
        batch.replies.append(
            (
                topics.membership_get_result(self.node_name),
                {
                    "event_id": event_id,
                    "timestamp": self._now(),
                    "devices": [self._member(d) for d in self._devices.values()],
                },
            )
        )
        # A mapper asking for its devices has just started: give it every desired value, reported or not.
        for device in self._devices.values():
            rows = self._rows.get(device.id, {})
            delta = {p: r.desired for p, r in rows.items() if p in device.properties and r.desired is not None}
            if delta:
                batch.replies.append(self._delta(device, delta))

    def _twin_update(self, device: NodeDevice, event_id: str, data: dict[str, Any], batch: _Batch) -> None:
        twin = data.get("twin")
        if not isinstance(twin, dict) or not twin:
            raise Rejection(400, "twin must be a non-empty object of properties")
        values: dict[str, str] = {}
        for prop, msg in twin.items():
            if prop not in device.properties:
                raise Rejection(400, f"device {device.id} has no property {prop!r}")
            if device.model is None:
                raise Rejection(404, f"device model {device.namespace}/{device.model_name} is unknown")
            kind = device.types.get(prop)
            if kind is None:
                raise Rejection(400, f"property {prop!r} is not in device model {device.model_name}")
            actual = msg.get("actual") if isinstance(msg, dict) else None
            if not isinstance(actual, dict) or "value" not in actual:
                raise Rejection(400, f"property {prop!r} has no actual value")
            try:
                value = wire_value(actual["value"])
                check_value(value, kind)
            except InvalidValue as exc:
                raise Rejection(400, f"property {prop!r}: {exc}") from None
            values[prop] = value
        # Every property checked: only now does anything change.
        now = self._now()
        rows = self._rows.setdefault(device.id, {})
        document: dict[str, Any] = {}
        for prop, value in values.items():
            before = rows.get(prop)
            row = (
                replace(before, reported=value, reported_version=before.reported_version + 1, reported_ts=now)
                if before is not None
                else TwinRow(device.id, prop, reported=value, reported_version=1, reported_ts=now)
            )
            rows[prop] = batch.reported[device.id, prop] = row
            document[prop] = {
                "last": self._msg_twin(device, prop, before) if before is not None else None,
                "current": self._msg_twin(device, prop, row),
            }
            batch.add_upstream(
                upstream.twin_reported(
                    device.namespace,
                    device.name,
                    prop,
                    value=value,
                    value_type=device.types[prop].lower(),
                    timestamp_ms=now,
                    observed_desired=row.desired or "",
                )
            )
        batch.replies.append(
            (topics.twin_update_result(device.id), {"event_id": event_id, "timestamp": now, "twin": twin})
        )
        batch.replies.append(
            (topics.twin_update_document(device.id), {"event_id": event_id, "timestamp": now, "twin": document})
        )
        log.debug("twin_reported", device=device.id, properties=sorted(values))

    def _twin_get(self, device: NodeDevice, event_id: str, batch: _Batch) -> None:
        rows = self._rows.get(device.id, {})
        batch.replies.append(
            (
                topics.twin_get_result(device.id),
                {
                    "event_id": event_id,
                    "timestamp": self._now(),
                    "twin": {prop: self._msg_twin(device, prop, rows.get(prop)) for prop in device.properties},
                },
            )
        )

    def _state_update(self, device: NodeDevice, event_id: str, data: dict[str, Any], batch: _Batch) -> None:
        state = data.get("state")
        if not isinstance(state, str) or not state or len(state.encode()) > MAX_STATE_BYTES:
            raise Rejection(400, f"state must be a non-empty string of at most {MAX_STATE_BYTES} bytes")
        now = self._now()
        batch.add_upstream(upstream.device_state(device.namespace, device.name, state, last_online_time=rfc3339(now)))
        if self._states.get(device.id) != state:
            log.info("device_state", device=device.id, state=state)
        self._states[device.id] = state
        batch.replies.append(
            (topics.state_update_result(device.id), {"event_id": event_id, "timestamp": now, "state": state})
        )


def _kind(resource: str) -> str:
    parts = resource.split("/", 2)
    return parts[1] if len(parts) == 3 else ""


def _decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejection(400, f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejection(400, "payload is not a JSON object")
    return data


def _lenient(payload: bytes) -> dict[str, Any]:
    try:
        return _decode(payload)
    except Rejection:
        return {}
