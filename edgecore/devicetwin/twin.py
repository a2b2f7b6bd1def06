"""DeviceTwin: the node's devices as mappers see them over MQTT, and their twins kept in SQLite.

This module is the I/O and the state; what it checks and the shapes it sends are pure functions in
``edgecore.devicetwin.model``.

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
from dataclasses import dataclass, field
from typing import Any

from common import devices as topics
from common import upstream
from common.devices import Topic, error_payload, parse_request_topic
from common.logging import get_logger
from common.upstream import Upstream, UpstreamPublisher
from edgecore.devicetwin import model
from edgecore.devicetwin.model import NodeDevice, Rejection
from edgecore.devicetwin.store import TwinRow, TwinStore
from edgecore.metamanager.store import Change, MetaStore

log = get_logger(__name__)

DEVICE_KINDS = ("device", "devicemodel")


LocalPublisher = Callable[[str, dict[str, Any]], None]  # ``EventBus.publish``: to mappers, best effort


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
            device_model = models.get((namespace, str((spec.get("deviceModelRef") or {}).get("name") or "")))
            device = NodeDevice.build(obj, device_model)
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
        payload = model.delta_payload(
            device, self._rows.get(device.id, {}), delta, event_id=uuid.uuid4().hex, now_ms=self._now()
        )
        return topics.twin_update_delta(device.id), payload

    def _member(self, device: NodeDevice) -> dict[str, Any]:
        return model.membership_entry(device, self._states.get(device.id))

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
                self._membership_get(model.decode_leniently(payload), batch)
            return
        self.handled += 1
        event_id = ""
        try:
            data = model.decode(payload)
            event_id = model.event_id_of(data)
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
        event_id = model.event_id_of(data)
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
        values = model.reported_values(device, data)  # every property checked: only now does anything change
        now = self._now()
        rows = self._rows.setdefault(device.id, {})
        changes: dict[str, tuple[TwinRow | None, TwinRow]] = {}
        for prop, value in values.items():
            before = rows.get(prop)
            row = rows[prop] = batch.reported[device.id, prop] = model.with_report(before, device.id, prop, value, now)
            changes[prop] = (before, row)
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
            (topics.twin_update_result(device.id), {"event_id": event_id, "timestamp": now, "twin": data["twin"]})
        )
        batch.replies.append(
            (
                topics.twin_update_document(device.id),
                model.twin_document(device, changes, event_id=event_id, now_ms=now),
            )
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
                    "twin": model.all_twins(device, rows),
                },
            )
        )

    def _state_update(self, device: NodeDevice, event_id: str, data: dict[str, Any], batch: _Batch) -> None:
        state = model.reported_state(data)
        now = self._now()
        batch.add_upstream(
            upstream.device_state(device.namespace, device.name, state, last_online_time=model.rfc3339(now))
        )
        if self._states.get(device.id) != state:
            log.info("device_state", device=device.id, state=state)
        self._states[device.id] = state
        batch.replies.append(
            (topics.state_update_result(device.id), {"event_id": event_id, "timestamp": now, "state": state})
        )


def _kind(resource: str) -> str:
    parts = resource.split("/", 2)
    return parts[1] if len(parts) == 3 else ""
