"""EventBus: EdgeCore's MQTT client, the link between DeviceTwin and the node's mappers.

It connects to the external broker (KubeEdge's default mode, ``mqttMode: 2``), subscribes to the device
request topics of ``common.devices.EDGE_SUBSCRIPTIONS`` and hands every message to one handler as it arrives
(DeviceTwin queues it, bounded). It reconnects after a backoff delay for as long as EdgeCore runs, quietly: a
broker that is absent or restarting costs a warning per attempt, never the process. The MQTT itself is
``edgecore.eventbus.mqtt``.

Publishing is best effort and bounded, for replies and telemetry to mappers only (what must reach the cloud
goes through EdgeHub's durable outbox): ``publish`` queues and returns at once; the queue is sent with QoS 1 and
a window of publishes in flight while connected; a message that waited longer than ``max_wait`` or that
overflows ``max_queued`` is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from common.config import settings_from
from common.devices import EDGE_SUBSCRIPTIONS
from common.logging import get_logger
from common.protocol.backoff import backoff_delays
from edgecore import config
from edgecore.eventbus.mqtt import MqttClient, MqttError
from edgecore.eventbus.packets import PacketError

log = get_logger(__name__)

MessageHandler = Callable[[str, bytes], None]  # (topic, payload); must not block: queue the work
ConnectionListener = Callable[[bool], None]


def parse_server(url: str) -> tuple[str, int]:
    """``tcp://host:port`` → (host, port). TLS brokers are not supported yet."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme != "tcp" or not parts.hostname:
        raise ValueError(f"MQTT server {url!r} is not tcp://host:port")
    return parts.hostname, parts.port or 1883


@dataclass(frozen=True)
class EventBusSettings:
    server: str = "tcp://127.0.0.1:1883"
    client_id: str = ""  # default: edgecore-<random>, so two clients never take over each other's session
    qos: int = 1
    keepalive: int = 30  # seconds; a silent broker is given up after 1.5 of these
    timeout: float = 10.0  # connect and subscribe
    window: int = 100  # QoS 1 publishes in flight
    max_queued: int = 10_000  # publishes waiting for the broker; the oldest is dropped beyond this
    max_wait: float = 10.0  # seconds a publish may wait for the broker before it is dropped

    @classmethod
    def from_config(cls, bus: config.EventBus) -> EventBusSettings:
        return settings_from(cls, bus, server=bus.mqtt_server_external, qos=bus.mqtt_qos, timeout=bus.connect_timeout)


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    deadline: float


class EventBus:
    def __init__(
        self,
        settings: EventBusSettings,
        *,
        handler: MessageHandler | None = None,
        delays: Callable[[], Iterator[float]] = backoff_delays,
    ) -> None:
        if settings.qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS must be 0, 1 or 2, not {settings.qos}")
        self.settings = settings
        self._host, self._port = parse_server(settings.server)
        self._client_id = settings.client_id or f"edgecore-{uuid.uuid4().hex[:12]}"
        self._handler = handler
        self._delays = delays
        self._queue: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._listeners: list[ConnectionListener] = []
        self.connected = asyncio.Event()
        self.connections = 0  # sessions established so far
        self.received = 0
        self.published = 0  # acknowledged by the broker (QoS 1) or written (QoS 0)
        self.dropped = 0  # publishes given up: waited too long or queue full

    def set_handler(self, handler: MessageHandler) -> None:
        """Who receives the messages; set once, before ``run`` (the handler usually needs ``publish`` too)."""
        self._handler = handler

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """``listener(connected)`` on every connect and disconnect (DeviceTwin re-sends pending deltas)."""
        self._listeners.append(listener)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue ``payload`` as JSON for ``topic``; it is sent when connected, or dropped after ``max_wait``."""
        self._expire()
        if len(self._queue) >= self.settings.max_queued:
            self._queue.popleft()
            self._count_dropped(1, "queue_full")
        deadline = asyncio.get_running_loop().time() + self.settings.max_wait
        self._queue.append(_Outgoing(topic, orjson.dumps(payload), deadline))
        self._wake.set()

    async def run(self) -> None:
        """Connect, serve, reconnect after a backoff delay; forever, until cancelled."""
        delays = self._delays()
        while True:
            try:
                await self._connect_once()
                delays = self._delays()
            except MqttError as exc:
                delay = next(delays)
                log.warning("mqtt_unavailable", server=self.settings.server, error=str(exc), retry_in_s=round(delay, 2))
            else:
                delay = next(delays)
            self._expire()
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        s = self.settings
        client = await MqttClient.connect(
            self._host,
            self._port,
            client_id=self._client_id,
            keepalive=s.keepalive,
            handler=self._deliver,
            timeout=s.timeout,
        )
        try:
            await client.subscribe([(topic, s.qos) for topic in EDGE_SUBSCRIPTIONS], s.timeout)
            self.connections += 1
            log.info("mqtt_connected", server=s.server, client_id=self._client_id, queued=len(self._queue))
            self._set_connected(True)
            sender = asyncio.create_task(self._send_loop(client), name="eventbus.send")
            try:
                await client.wait_closed()
            except MqttError as exc:
                log.warning("mqtt_disconnected", server=s.server, error=str(exc))
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                self._set_connected(False)
        finally:
            await client.close()

    def _deliver(self, topic: str, payload: bytes) -> None:
        self.received += 1
        if self._handler is None:
            log.warning("mqtt_message_unhandled", topic=topic)
            return
        try:
            self._handler(topic, payload)
        except Exception:
            log.exception("mqtt_handler_failed", topic=topic)

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self.connected.set()
        else:
            self.connected.clear()
        for listener in self._listeners:
            try:
                listener(connected)
            except Exception:
                log.exception("mqtt_listener_failed")

    async def _send_loop(self, client: MqttClient) -> None:
        """The queue, oldest first, with at most ``window`` publishes awaiting the broker's acknowledgement."""
        window = asyncio.Semaphore(self.settings.window)
        while True:
            await window.acquire()
            self._expire()
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
                self._expire()
            item = self._queue.popleft()
            try:
                done = client.publish(item.topic, item.payload, self.settings.qos)
            except PacketError as exc:  # cannot be sent at all (a wildcard in the topic, say)
                window.release()
                self.dropped += 1
                log.warning("mqtt_publish_refused", topic=item.topic[:200], error=str(exc))
                continue
            except MqttError:  # the connection is going: the item waits for the next one
                self._queue.appendleft(item)
                window.release()
                return
            done.add_done_callback(functools.partial(self._acknowledged, item, window))
            await client.drain()

    def _acknowledged(self, item: _Outgoing, window: asyncio.Semaphore, done: asyncio.Future[object]) -> None:
        window.release()
        if done.cancelled() or done.exception() is not None:
            # Not acknowledged: back to the front for the next connection (QoS 1 is at least once anyway).
            self._queue.appendleft(item)
            self._wake.set()
        else:
            self.published += 1

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        expired = 0
        while self._queue and self._queue[0].deadline <= now:
            self._queue.popleft()
            expired += 1
        if expired:
            self._count_dropped(expired, "broker_unavailable")

    def _count_dropped(self, count: int, reason: str) -> None:
        first = self.dropped == 0
        self.dropped += count
        if first or self.dropped % 1000 < count:  # the first and then one line per thousand
            log.warning("mqtt_publish_dropped", count=count, total=self.dropped, reason=reason)
