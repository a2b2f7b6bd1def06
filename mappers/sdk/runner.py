"""The MQTT side of a mapper: fetch the node's device list, run one task per device of our protocol, carry
their reports to the broker and desired values from it.

Lifetimes: the runner's TaskGroup owns every device task; each broker connection owns a TaskGroup with the
outbox writer and the membership request, and reads incoming messages itself. Losing the broker ends only the
connection: devices keep collecting into the outbox (latest per topic), and after the reconnect (backoff with
full jitter) the runner subscribes again, asks for membership again and republishes device states.

Stopping is made to hold on Python 3.11, whose ``asyncio.wait_for`` drops a cancellation that races the awaited
result: aiomqtt calls get ``timeout=math.inf`` (no ``wait_for`` deadline) under our own ``asyncio.timeout``,
device tasks get a stop flag besides the cancellation, and ``run`` repeats its cancellation until the work ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson

from common.devices import (
    MAX_PAYLOAD_BYTES,
    PREFIX,
    membership_get,
    membership_get_result,
    membership_updated,
    twin_update_delta,
)
from common.logging import get_logger
from common.protocol.backoff import backoff_delays
from mappers.sdk.device import DeviceTask, event_id
from mappers.sdk.driver import DriverFactory
from mappers.sdk.errors import InvalidConfig
from mappers.sdk.outbox import Outbox
from mappers.sdk.plan import DevicePlan, Member, plan_device, protocol_name

MAX_MEMBERSHIP_BYTES = 8 * 1024 * 1024  # a node's whole device list, specs included
SUBSCRIBE_BATCH = 100  # topics per SUBSCRIBE packet
MEMBERSHIP_RETRY_MAX_S = 30.0  # how often, at most, to ask an EdgeCore that has not answered yet

# aiomqtt warns on every publish beyond 10 pending calls; ours are bounded by the single writer anyway.
_mqtt_logger = logging.getLogger("mappers.mqtt")


@dataclass(frozen=True)
class Broker:
    host: str
    port: int = 1883

    @classmethod
    def parse(cls, url: str) -> Broker:
        """``tcp://host:port`` (also ``mqtt://``, or a bare ``host:port``); the port defaults to 1883."""
        parts = urlsplit(url if "://" in url else f"tcp://{url}")
        if parts.scheme not in ("tcp", "mqtt"):
            raise InvalidConfig(f"broker {url!r}: only tcp:// (plain MQTT) is supported")
        if not parts.hostname:
            raise InvalidConfig(f"broker {url!r} names no host")
        try:
            port = parts.port or 1883
        except ValueError:
            raise InvalidConfig(f"broker {url!r} has a bad port") from None
        return cls(parts.hostname, port)

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass
class _Managed:
    member: Member
    plan: DevicePlan
    device: DeviceTask
    task: asyncio.Task[None]


class MapperRunner:
    def __init__(
        self,
        *,
        protocol: str,
        node: str,
        driver: DriverFactory,
        broker: Broker,
        max_devices: int = 1000,
        call_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        reconnect_delays: Callable[[], Iterator[float]] = backoff_delays,
    ) -> None:
        if not node or any(c in node for c in "/+#"):
            raise InvalidConfig(f"bad node name {node!r}")
        self.protocol = protocol
        self.node = node
        self._driver = driver
        self._broker = broker
        self._max_devices = max_devices
        self._call_timeout = call_timeout
        self._publish_timeout = publish_timeout
        self._reconnect_delays = reconnect_delays
        self._outbox = Outbox(max_topics=4 * max_devices)
        self._devices: dict[str, _Managed] = {}
        self._group: asyncio.TaskGroup | None = None
        self._membership_seen = asyncio.Event()
        self._log = get_logger(__name__, protocol=protocol, node=node)

    @property
    def devices(self) -> list[str]:
        """The ids of the devices this mapper manages now."""
        return sorted(self._devices)

    async def run(self) -> None:
        """Serve until cancelled; a cancellation is repeated until the work has really stopped."""
        work = asyncio.create_task(self._run(), name="mapper.runner")
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            await cancel_until_done(work)
            raise
        work.result()

    async def _run(self) -> None:
        self._log.info("mapper_started", broker=str(self._broker))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                try:
                    await self._stay_connected()
                finally:
                    for managed in self._devices.values():
                        managed.device.request_stop()  # the group cancels them too; this holds if one is lost
        finally:
            self._group = None
            self._devices.clear()
            self._log.info("mapper_stopped")

    # -- the broker connection ------------------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        delays = self._reconnect_delays()
        while True:
            connected = False
            try:
                async with self._client() as client:
                    connected = True
                    delays = self._reconnect_delays()
                    self._log.info("broker_connected", broker=str(self._broker))
                    await self._session(client)
            except* aiomqtt.MqttError as errors:
                event = "broker_disconnected" if connected else "broker_unreachable"
                self._log.warning(event, broker=str(self._broker), error=str(errors.exceptions[0]))
            await asyncio.sleep(next(delays))

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            identifier=f"kubage-mapper-{self.protocol}-{self.node}-{uuid.uuid4().hex[:8]}",
            logger=_mqtt_logger,
            keepalive=30,
            timeout=self._publish_timeout,
            max_queued_incoming_messages=1000,
            max_queued_outgoing_messages=1000,
            max_inflight_messages=20,
        )
        client.pending_calls_threshold = 1000
        return client

    async def _session(self, client: aiomqtt.Client) -> None:
        topics = [(membership_get_result(self.node), 1), (membership_updated(self.node), 1)]
        await self._bounded(client.subscribe(topics, timeout=math.inf), "subscribe")
        await self._subscribe(client, list(self._devices))
        for managed in self._devices.values():
            managed.device.republish_state()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._write(client), name="mapper.writer")
            group.create_task(self._ask_membership(client), name="mapper.membership")
            async for message in client.messages:
                await self._handle(client, message)

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._outbox.get()
            try:
                await self._bounded(client.publish(topic, orjson.dumps(payload), qos=1, timeout=math.inf), "publish")
            except BaseException:
                self._outbox.give_back(topic, payload)  # at least once: it may have arrived, it may not
                raise

    async def _ask_membership(self, client: aiomqtt.Client) -> None:
        """Ask for the device list until EdgeCore answers: it may start after us, and MQTT keeps no request."""
        self._membership_seen.clear()
        wait = 1.0
        while True:
            request = orjson.dumps({"event_id": event_id()})
            await self._bounded(client.publish(membership_get(self.node), request, qos=1, timeout=math.inf), "publish")
            self._log.info("membership_requested")
            try:
                async with asyncio.timeout(wait):
                    await self._membership_seen.wait()
            except TimeoutError:
                wait = min(wait * 2, MEMBERSHIP_RETRY_MAX_S)
            else:
                return

    async def _subscribe(self, client: aiomqtt.Client, devices: Sequence[str]) -> None:
        for start in range(0, len(devices), SUBSCRIBE_BATCH):
            topics = [(twin_update_delta(d), 1) for d in devices[start : start + SUBSCRIBE_BATCH]]
            await self._bounded(client.subscribe(topics, timeout=math.inf), "subscribe")

    async def _unsubscribe(self, client: aiomqtt.Client, devices: Sequence[str]) -> None:
        for start in range(0, len(devices), SUBSCRIBE_BATCH):
            topics = [twin_update_delta(d) for d in devices[start : start + SUBSCRIBE_BATCH]]
            await self._bounded(client.unsubscribe(topics, timeout=math.inf), "unsubscribe")

    async def _bounded(self, call: Awaitable[object], what: str) -> None:
        """Our own deadline around an aiomqtt call made with ``timeout=math.inf``: aiomqtt's deadline goes through
        Python 3.11's ``asyncio.wait_for``, which drops a cancellation that races the broker's answer."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                await call
        except TimeoutError:
            raise aiomqtt.MqttError(f"{what}: no answer from the broker within {self._publish_timeout} s") from None

    # -- incoming messages ----------------------------------------------------------------------------------

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload
        try:
            if topic == membership_get_result(self.node):
                data = _decode(payload, MAX_MEMBERSHIP_BYTES)
                self._membership_seen.set()
                await self._update_devices(client, _entries(data, "devices"), full=True)
                for managed in self._devices.values():
                    managed.device.republish_state()  # EdgeCore answers: it listens now, maybe not at our reconnect
            elif topic == membership_updated(self.node):
                data = _decode(payload, MAX_MEMBERSHIP_BYTES)
                removed = [e.get("id") for e in _entries(data, "removed_devices") if isinstance(e, dict)]
                await self._update_devices(
                    client, _entries(data, "added_devices"), removed=[r for r in removed if isinstance(r, str)]
                )
            elif topic.endswith("/twin/update/delta"):
                self._on_delta(topic, _decode(payload, MAX_PAYLOAD_BYTES))
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            self._log.warning("message_refused", topic=topic, reason=str(exc))

    def _on_delta(self, topic: str, data: dict[str, Any]) -> None:
        parts = topic.split("/")
        managed = self._devices.get(f"{parts[3]}/{parts[4]}") if len(parts) == 8 else None
        if managed is None:
            return
        delta = data.get("delta")
        if not isinstance(delta, dict):
            raise InvalidConfig("a delta needs a 'delta' object")
        values = {k: v for k, v in delta.items() if isinstance(k, str) and isinstance(v, str)}
        if len(values) != len(delta):
            self._log.warning("delta_values_refused", device=managed.plan.id, reason="values must be strings")
        managed.device.desire(values)

    # -- the device set -------------------------------------------------------------------------------------

    async def _update_devices(
        self, client: aiomqtt.Client, entries: list[Any], *, full: bool = False, removed: Sequence[str] = ()
    ) -> None:
        """Apply a membership: a full list (``full``) replaces the set, an update adds and removes."""
        wanted: dict[str, tuple[Member, DevicePlan]] = {}
        for entry in entries:
            name = entry.get("id") if isinstance(entry, dict) else None
            if protocol_name(entry) != self.protocol:
                self._log.debug("device_ignored", device=name, device_protocol=protocol_name(entry) or None)
                continue
            try:
                plan = plan_device(entry)
            except ValueError as exc:
                self._log.warning("device_refused", device=name, reason=str(exc))
                continue
            wanted[plan.id] = (entry, plan)
        leaving = (set(self._devices) - set(wanted)) if full else set(removed) & set(self._devices)
        changed = {
            d
            for d, (entry, _) in wanted.items()
            if d in self._devices and _shape(entry) != _shape(self._devices[d].member)
        }
        for device in sorted(leaving | changed):
            await self._stop_device(device)
        unsubscribe = sorted(leaving - set(wanted))
        if unsubscribe:
            await self._unsubscribe(client, unsubscribe)
        started = []
        for device, (entry, plan) in wanted.items():
            if device in self._devices:
                continue
            if len(self._devices) >= self._max_devices:
                self._log.warning("device_refused", device=device, reason=f"at most {self._max_devices} devices")
                continue
            self._start_device(entry, plan)
            started.append(device)
        if started:
            await self._subscribe(client, started)
        if leaving or started:
            self._log.info("devices_updated", devices=len(self._devices), started=started, stopped=sorted(leaving))

    def _start_device(self, member: Member, plan: DevicePlan) -> None:
        assert self._group is not None
        device = DeviceTask(member, plan, self._driver(), self._outbox, call_timeout=self._call_timeout)
        task = self._group.create_task(self._supervise(plan.id), name=f"device.{plan.id}")
        self._devices[plan.id] = _Managed(member, plan, device, task)

    async def _supervise(self, device_id: str) -> None:
        """Run a device task; should one ever crash (a bug), log it and start it afresh with a new driver."""
        delays = backoff_delays(initial=1.0, cap=60.0)
        while True:
            managed = self._devices.get(device_id)
            if managed is None:
                return
            try:
                await managed.device.run()
            except Exception:
                self._log.exception("device_task_crashed", device=device_id)
            else:
                return
            await asyncio.sleep(next(delays))
            managed.device = DeviceTask(
                managed.member, managed.plan, self._driver(), self._outbox, call_timeout=self._call_timeout
            )

    async def _stop_device(self, device_id: str) -> None:
        managed = self._devices.pop(device_id)
        managed.device.request_stop()
        managed.task.cancel()
        await asyncio.wait({managed.task})  # its driver.stop() is bounded by call_timeout
        self._outbox.discard(f"{PREFIX}/device/{device_id}/")


async def cancel_until_done(task: asyncio.Task[Any], *, every: float = 1.0) -> None:
    """Cancel a task and wait for its end, cancelling again while it runs on (a library dropped the first)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)


def _shape(entry: Member) -> tuple[Any, Any]:
    """What a device restarts for: its spec or model (not its state, which the mapper itself reports)."""
    return entry.get("spec"), entry.get("model")


def _decode(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise InvalidConfig(f"payload of {len(payload)} bytes exceeds {limit}")
    data = orjson.loads(payload)
    if not isinstance(data, dict):
        raise InvalidConfig("payload must be a JSON object")
    return data


def _entries(data: dict[str, Any], key: str) -> list[Any]:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise InvalidConfig(f"{key!r} must be a list")
    return entries
