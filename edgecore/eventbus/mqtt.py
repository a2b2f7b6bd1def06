"""A small MQTT 3.1.1 client on an asyncio Protocol: what EdgeCore's event bus needs and no more.

It replaced aiomqtt and paho in EdgeCore (the mappers and the dev tools still use them). Those cost the
gateway 5.2 MiB of RSS, and on the device path they took about 30 % of EdgeCore's main thread (py-spy), every
packet going through paho's general client and aiomqtt's queues and futures on top of it. Here a received
packet is parsed in ``data_received`` and handled there: a PUBLISH goes to the handler and is acknowledged, an
acknowledgement completes the future of what it acknowledges. What is written in one turn of the event loop
(the acknowledgements of a burst, a batch of publishes) goes out in one write.

One connection per client; it is not reconnected here (``EventBus`` does that, with its backoff). The
keepalive follows the specification: a PINGREQ when nothing went either way for ``keepalive`` seconds, and the
broker is given up when nothing came back for 1.5 times that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from edgecore.eventbus import packets as p

MessageHandler = Callable[[str, bytes], None]  # (topic, payload); runs inside data_received: must not block

DEFAULT_MAX_PACKET = 16 * 1024 * 1024  # a twin document is a few KiB; anything this large is a mistake


class MqttError(Exception):
    """The broker is unreachable, refused the client, broke the protocol or went away; the message says which."""


class MqttClient(asyncio.Protocol):
    def __init__(
        self,
        *,
        client_id: str,
        keepalive: int,
        handler: MessageHandler,
        clean_session: bool = True,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.client_id = client_id
        self.keepalive = keepalive
        self._handler = handler
        self._clean_session = clean_session
        self._parser = p.Parser(max_packet)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[object]] = {}  # packet id → what its acknowledgement completes
        self._incoming_qos2: set[int] = set()  # received at QoS 2, PUBREL not yet seen
        self._next_id = 1
        self._last_in = self._last_out = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._ping_due = False
        self._writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self._out: list[bytes] = []  # written in this turn of the loop; _flush sends them as one

    # --- the connection ----------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        keepalive: int,
        handler: MessageHandler,
        timeout: float,  # noqa: ASYNC109 - connect and CONNACK under one deadline
        clean_session: bool = True,
    ) -> MqttClient:
        loop = asyncio.get_running_loop()
        client = cls(client_id=client_id, keepalive=keepalive, handler=handler, clean_session=clean_session)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: client, host, port)
                code = await client._connack
        except TimeoutError:
            client.abort()
            raise MqttError(f"no CONNACK from {host}:{port} within {timeout} s") from None
        except OSError as exc:
            raise MqttError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        if code:
            client.abort()
            reason = p.CONNACK_REFUSED.get(code, f"return code {code}")
            raise MqttError(f"{host}:{port} refused the connection: {reason}")
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass, so no isinstance check)
        self._transport = cast(asyncio.Transport, transport)
        self._write(p.connect(self.client_id, keepalive=self.keepalive, clean_session=self._clean_session))
        if self.keepalive:
            self._timer = self._loop.call_later(self.keepalive / 4, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(MqttError(f"connection lost: {exc}" if exc else "the broker closed the connection"))

    def _lost(self, error: MqttError, *, abort: bool = True) -> None:
        """The connection is over: everything waiting on it fails with ``error``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting: list[asyncio.Future[Any]] = [self._connack, self._closed, *self._pending.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for future in (self._connack, self._closed):
            if not future.cancelled():
                future.exception()  # retrieved: nobody may wait for these two, and asyncio would log it
        self.resume_writing()  # a drain() returns, and the next write says "not connected"
        if abort and self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Until the connection ends; raises the ``MqttError`` saying why (a ``close`` ends it quietly)."""
        await asyncio.shield(self._closed)

    async def close(self) -> None:
        """DISCONNECT, then close the connection once what is buffered went out."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._out.append(p.DISCONNECT_PACKET)
            self._flush()
            transport.close()
        if not self._closed.done():
            self._closed.set_result(None)
        self._lost(MqttError("the client closed the connection"), abort=False)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- what the client sends ---------------------------------------------------------------------------

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float) -> None:  # noqa: ASYNC109
        pid = self._packet_id()
        done = self._expect(pid)
        self._write(p.subscribe(pid, topics))
        try:
            async with asyncio.timeout(timeout):
                codes = await done
        except TimeoutError:
            self._pending.pop(pid, None)
            raise MqttError(f"no SUBACK within {timeout} s") from None
        assert isinstance(codes, list)
        refused = [topic for (topic, _), code in zip(topics, codes, strict=False) if code == p.SUBACK_FAILURE]
        if refused or len(codes) != len(topics):
            raise MqttError(f"the broker refused the subscription to {', '.join(refused) or 'some topics'}")

    def publish(self, topic: str, payload: bytes, qos: int) -> asyncio.Future[object]:
        """Written at once; the future completes when the broker has it (PUBACK at QoS 1, PUBCOMP at 2), or
        at once at QoS 0, and fails with ``MqttError`` if the connection ends first."""
        if qos == 0:
            self._write(p.publish(p.Publish(topic, payload, 0, 0)))
            done: asyncio.Future[object] = self._loop.create_future()
            done.set_result(None)
            return done
        pid = self._packet_id()
        packet = p.publish(p.Publish(topic, payload, qos, pid))  # a PacketError leaves nothing behind
        done = self._expect(pid)
        self._write(packet)
        return done

    async def drain(self) -> None:
        """Until the transport's write buffer is below its high-water mark again."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttError("not connected")
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)
        self._last_out = self._loop.time()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _packet_id(self) -> int:
        if len(self._pending) >= 0xFFFF:
            raise MqttError("65535 packets await their acknowledgement")
        pid = self._next_id
        while pid in self._pending:
            pid = pid % 0xFFFF + 1
        self._next_id = pid % 0xFFFF + 1
        return pid

    def _expect(self, pid: int) -> asyncio.Future[object]:
        if self._closed.done():
            raise MqttError("not connected")
        future: asyncio.Future[object] = self._loop.create_future()
        self._pending[pid] = future
        return future

    # --- what the broker sends ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._last_in = self._loop.time()
        self._ping_due = False
        try:
            for packet in self._parser.feed(data):
                self._handle(packet)
        except p.PacketError as exc:
            self._lost(MqttError(f"the broker broke the protocol: {exc}"))
        except MqttError as exc:  # an answer could not be written: the connection is going
            self._lost(exc)

    def _handle(self, packet: p.Packet) -> None:
        kind = packet.kind
        if kind == p.PUBLISH:
            self._received(p.parse_publish(packet))
        elif kind in (p.PUBACK, p.PUBCOMP):
            self._complete(p.packet_id(packet), None)
        elif kind == p.PUBREC:
            pid = p.packet_id(packet)
            if pid in self._pending:
                self._write(p.ack(p.PUBREL, pid))
        elif kind == p.PUBREL:
            pid = p.packet_id(packet)
            self._incoming_qos2.discard(pid)
            self._write(p.ack(p.PUBCOMP, pid))
        elif kind == p.SUBACK:
            pid, codes = p.suback(packet)
            self._complete(pid, codes)
        elif kind == p.CONNACK and not self._connack.done():
            self._connack.set_result(p.connack(packet))
        # PINGRESP and UNSUBACK: the arrival itself is all that counts

    def _received(self, message: p.Publish) -> None:
        if message.qos == 2:
            if message.packet_id not in self._incoming_qos2:  # a resent one was handed over already
                self._incoming_qos2.add(message.packet_id)
                self._hand_over(message)
            self._write(p.ack(p.PUBREC, message.packet_id))
            return
        self._hand_over(message)
        if message.qos == 1:
            self._write(p.ack(p.PUBACK, message.packet_id))

    def _hand_over(self, message: p.Publish) -> None:
        self._handler(message.topic, message.payload)

    def _complete(self, pid: int, result: object) -> None:
        future = self._pending.pop(pid, None)
        if future is not None and not future.done():
            future.set_result(result)

    # --- keepalive -----------------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self._last_in > 1.5 * self.keepalive:
            self._lost(
                MqttError(f"nothing from the broker for {now - self._last_in:.0f} s (keepalive {self.keepalive} s)")
            )
            return
        # Silent either way for a keepalive: the broker wants a packet (it gives up after 1.5 keepalives without
        # one), and we want to hear from it (a client that only publishes at QoS 0 hears nothing otherwise).
        if not self._ping_due and now - min(self._last_in, self._last_out) >= self.keepalive:
            try:
                self._write(p.PINGREQ_PACKET)
            except MqttError as exc:
                self._lost(exc)
                return
            self._ping_due = True
        self._timer = self._loop.call_later(self.keepalive / 4, self._tick)
