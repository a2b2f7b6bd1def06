"""EdgeHub: connects to CloudHub and keeps reconnecting; persists, then acks; drains the outbox.

Each connection starts with the store's inventory, so the cloud sends only what changed while the link was
down. Cloud messages are applied to the store in batches, one transaction each, and acked only after the
commit. Upstream messages go to the durable outbox first (``publish``) and are deleted from it when the cloud
acks them, so a status reported while offline still arrives, once, at its latest value.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI

from common.config import settings_from
from common.hublink import HubLink
from common.logging import get_logger
from common.messages import DEFAULT_MAX_FRAME_BYTES, Message, NodeName
from common.protocol.backoff import backoff_delays
from common.protocol.outbox import Outbox, OutboxItem
from common.protocol.session import CloseCode, Deliver, EdgeSession, Event, OutboxDelivered, Ready, Received
from common.upstream import Upstream
from edgecore import config
from edgecore.metamanager.store import Change, MetaStore

log = get_logger(__name__)

STREAM_FRAME_BYTES = 1024 * 1024  # stream frames are 64 KiB chunks; the first is a request head
# The longest wait between two attempts to reach CloudCore, and so how long after CloudCore is back an edge may
# still wait: with a 30 s cap, a fleet took 39 s to resync after a 17 s CloudCore restart (reconnect.py). Full
# jitter spreads a fleet's reconnects evenly over the cap; CloudCore accepts them while its caches fill.
RECONNECT_CAP_S = 10.0


def reconnect_delays() -> Iterator[float]:
    return backoff_delays(cap=RECONNECT_CAP_S)


ChangeListener = Callable[[list[Change]], None]
MessageHandler = Callable[[Message], Awaitable[None]]
ConnectionListener = Callable[[bool], None]


@dataclass(frozen=True)
class EdgeHubSettings:
    """What EdgeHub runs with; ``modules.edgeHub`` documents each field."""

    server: str  # CloudHub's host:port; several, comma-separated, are tried in turn (CloudCore replicas)
    node_name: NodeName
    project_id: str = "e632aba927ea4ac2b575ec1603d56f10"
    keepalive_interval: float = 15.0
    read_timeout: float | None = None  # default: 2.5 keepalive intervals
    write_timeout: float = 15.0
    handshake_timeout: float = 30.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    batching: bool = True
    window: int = 64
    close_timeout: float = 2.0
    server_hostname: str = ""  # name to check in CloudCore's certificate; empty: the host in server

    @classmethod
    def from_config(cls, hub: config.EdgeHub, node_name: NodeName) -> EdgeHubSettings:
        ws = hub.websocket
        return settings_from(
            cls,
            hub,
            server=ws.server,
            node_name=node_name,
            keepalive_interval=hub.heartbeat,
            read_timeout=ws.read_deadline,
            write_timeout=ws.write_deadline,
            handshake_timeout=ws.handshake_timeout,
            close_timeout=ws.close_timeout,
            server_hostname=ws.server_hostname,
        )


async def _drop_message(message: Message) -> None:
    log.info("cloud_message_unhandled", operation=message.route.operation, resource=message.route.resource)


class NotConnected(Exception):
    """A request to the cloud could not be sent or answered: the link is down or the answer did not come."""


class EdgeHub:
    def __init__(
        self,
        *,
        settings: EdgeHubSettings,
        ssl_context: ssl.SSLContext,
        store: MetaStore,
        delays: Callable[[], Iterator[float]] = reconnect_delays,
        on_message: MessageHandler | None = None,
    ) -> None:
        self.settings = settings
        self.ssl_context = ssl_context  # CertRotator loads a renewed certificate into it
        self.store = store
        self._delays = delays
        self._on_message = on_message or _drop_message
        self.outbox = Outbox(source="edgehub", window=settings.window)
        self._outbox_loaded = False
        self._link: HubLink | None = None
        self._change_listeners: list[ChangeListener] = []
        self._connection_listeners: list[ConnectionListener] = []
        self.connected = asyncio.Event()
        self._servers = [part.strip() for part in settings.server.split(",") if part.strip()]
        self._current = 0
        self.sessions = 0  # established sessions so far
        self.last_resync = 0
        self.delivered = 0  # reliable cloud messages received, whether or not they changed the store
        self.applied = 0  # cloud messages that changed the store
        self._wire = (0, 0)  # websocket payload bytes received and sent by the sessions that have ended
        self.rejected = 0
        self._waiting: dict[str, asyncio.Future[Message]] = {}  # msg_id of a request → its response

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._change_listeners.append(listener)

    def set_message_handler(self, handler: MessageHandler) -> None:
        """Who gets the cloud's best-effort messages (stream requests, query responses)."""
        self._on_message = handler

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """``listener(connected)``: other modules switch to offline autonomy and back."""
        self._connection_listeners.append(listener)

    @property
    def bytes_received(self) -> int:
        """Websocket payload received from the cloud over all sessions, the current one included."""
        return self._wire[0] + (self._link.bytes_received if self._link is not None else 0)

    @property
    def bytes_sent(self) -> int:
        return self._wire[1] + (self._link.bytes_sent if self._link is not None else 0)

    @property
    def server(self) -> str:
        """The CloudCore endpoint in use or tried next."""
        return self._servers[self._current]

    @property
    def uri(self) -> str:
        s = self.settings
        return f"wss://{self.server}/{s.project_id}/{s.node_name}/events"  # the path KubeEdge's EdgeHub dials

    async def publish(self, *messages: Upstream) -> None:
        """Send upstream, reliably: durable first (all of ``messages`` in one transaction), then delivered when
        connected; a newer value of the same key replaces an undelivered older one."""
        if not messages:
            return
        await self._load_outbox()
        items = [
            OutboxItem(m.key, self.outbox.next_version(), m.group, m.operation, m.resource, m.content) for m in messages
        ]
        await self.store.outbox_put(items)
        for item in items:
            self.outbox.put(item)
        if self._link is not None:
            self._link.wake()

    def pending(self, prefix: str) -> int:
        """Upstream messages whose key starts with ``prefix`` waiting in the outbox."""
        return self.outbox.count(prefix)

    async def send(self, message: Message) -> bool:
        """Best effort (a query, say): False when not connected."""
        if self._link is None or not self.connected.is_set():
            return False
        await self._link.send(message)
        return True

    async def request(self, message: Message, timeout: float) -> Message:  # noqa: ASYNC109
        """Send ``message`` best effort and wait for the cloud's response to it (the message whose
        ``parent_msg_id`` is its id); NotConnected if offline or no answer came within ``timeout``."""
        msg_id = message.header.msg_id
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = answer
        try:
            if not await self.send(message):
                raise NotConnected("not connected to CloudCore")
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            raise NotConnected(f"CloudCore did not answer within {timeout:g} s") from None
        finally:
            self._waiting.pop(msg_id, None)

    async def dial(self, path: str, headers: dict[str, str]) -> ClientConnection:
        """Another connection to the CloudCore replica this hub talks to (a stream), with the node's certificate."""
        s = self.settings
        host = self.server.rsplit(":", 1)[0].strip("[]")
        return await connect(
            f"wss://{self.server}{path}",
            ssl=self.ssl_context,
            server_hostname=s.server_hostname or host,
            additional_headers=headers,
            open_timeout=s.handshake_timeout,
            max_size=STREAM_FRAME_BYTES,
            compression=None,
            ping_interval=None,
            close_timeout=s.close_timeout,
            user_agent_header=None,
        )

    async def _load_outbox(self) -> None:
        if not self._outbox_loaded:
            self._outbox_loaded = True
            self.outbox.load(await self.store.outbox_load())

    async def run(self) -> None:
        """Connect, serve, reconnect after a backoff delay; forever, until cancelled."""
        await self._load_outbox()
        delays = self._delays()
        while True:
            try:
                if await self._connect_once():
                    delays = self._delays()  # a session was established: start the backoff afresh
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.warning("cloud_unreachable", server=self.server, error=str(exc) or type(exc).__name__)
            self._current = (self._current + 1) % len(self._servers)  # next replica, if there are several
            delay = next(delays)
            log.info("reconnecting", delay_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _connect_once(self) -> bool:
        s = self.settings
        host = self.server.rsplit(":", 1)[0].strip("[]")
        async with connect(
            self.uri,
            ssl=self.ssl_context,
            server_hostname=s.server_hostname or host,
            additional_headers={"node_id": s.node_name, "project_id": s.project_id},
            open_timeout=s.handshake_timeout,
            max_size=s.max_frame_bytes,
            compression=None,
            ping_interval=None,
            close_timeout=s.close_timeout,
            user_agent_header=None,
        ) as ws:
            loop = asyncio.get_running_loop()
            session = EdgeSession(
                await self.store.inventory(),
                self.outbox,
                digests=await self.store.digests(),
                now=loop.time(),
                keepalive_interval=s.keepalive_interval,
                read_timeout=s.read_timeout,
                batching=s.batching,
            )
            link = HubLink(
                ws,
                session,
                lambda events: self._on_events(session, events),
                name="edgehub",
                max_frame_bytes=s.max_frame_bytes,
                write_timeout=s.write_timeout,
                close_timeout=s.close_timeout,
            )
            await link.send(session.hello(loop.time(), 0))
            self._link = link
            try:
                await link.run()
            except asyncio.CancelledError:
                # EdgeCore is stopping: say so, rather than websockets' default 1011 for an aborted block.
                await link.close(CloseCode.GOING_AWAY, "EdgeCore is shutting down")
                raise
            finally:
                self._wire = (self._wire[0] + link.bytes_received, self._wire[1] + link.bytes_sent)
                self._link = None
                session.close()
                if self.connected.is_set():
                    self.connected.clear()
                    self._notify(connected=False)
                log.info("cloud_disconnected", code=link.close_code, reason=link.close_reason)
            return session.established

    async def _on_events(self, session: EdgeSession, events: list[Event]) -> None:
        deliveries = [e for e in events if isinstance(e, Deliver)]
        if deliveries:
            changes, rejected = await self.store.apply([d.message for d in deliveries])
            for bad in rejected:
                # Acked all the same: the cloud would only send the same broken message again.
                log.error("cloud_message_rejected", resource=bad.message.route.resource, reason=bad.reason)
            for delivery in deliveries:
                session.delivered(delivery.seq)
            self.delivered += len(deliveries)
            self.applied += len(changes)
            self.rejected += len(rejected)
            if changes:
                for listener in self._change_listeners:
                    listener(changes)
        for event in events:
            if isinstance(event, OutboxDelivered):
                await self.store.outbox_delete(event.items)
            elif isinstance(event, Received):
                waiter = self._waiting.get(event.message.header.parent_msg_id or "")
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.message)
                else:
                    await self._on_message(event.message)
            elif isinstance(event, Ready):
                self.sessions += 1
                self.last_resync = event.resync
                log.info("cloud_connected", resync=event.resync, batching=event.batching, outbox=len(self.outbox))
                self.connected.set()
                self._notify(connected=True)

    def _notify(self, *, connected: bool) -> None:
        for listener in self._connection_listeners:
            try:
                listener(connected)
            except Exception:
                log.exception("connection_listener_failed")
