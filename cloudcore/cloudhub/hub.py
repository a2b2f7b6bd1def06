"""CloudHub: mutual-TLS WebSocket server, one session per edge node, and the controllers' view of it.

Three parts: the per-node pool of what each node should hold (``pool.NodePool``, pure), the registry of which
link serves which node (``registry.SessionRegistry``, pure), and this module's server around them. Controllers
tell the hub what each node should hold (``upsert``, ``delete``, ``set_objects``) whether or not the node is
connected; each session sends its edge the difference. Upstream messages reach the controllers through one
handler, in order per node; reliable ones are acked to the edge only after the handler returns.

The node's name comes from its client certificate (``CN=system:node:<name>``), never from a header.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from websockets.asyncio.server import Server, ServerConnection, serve

from cloudcore import config
from cloudcore.cloudhub.pool import NodePool
from cloudcore.cloudhub.registry import SessionRegistry
from common import streams
from common import upstream as contract
from common.config import settings_from
from common.hublink import HubLink
from common.logging import Throttle, get_logger
from common.messages import DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME_BYTES, Message, NodeName, ObjectUid
from common.protocol.downstream import DesiredObject
from common.protocol.ratelimit import TokenBucket
from common.protocol.reliable import DEFAULT_WINDOW
from common.protocol.session import DEFAULT_MAX_INVENTORY, CloseCode, CloudSession, Deliver, Event, Ready, Received
from common.tls import IdentityError, node_name_from_peercert

log = get_logger(__name__)

UpstreamHandler = Callable[[NodeName, Message], Awaitable[None]]
ConnectionListener = Callable[[NodeName, bool], None]
# (node, connection, path, token): a stream connection an edge dialled back (common/streams.py)
StreamAcceptor = Callable[[NodeName, ServerConnection, str, str], Awaitable[None]]


@dataclass(frozen=True)
class HubSettings:
    """What CloudHub runs with; ``modules.cloudHub`` documents each field."""

    host: str = "0.0.0.0"  # noqa: S104 - edges connect from other machines
    port: int = 10000
    node_limit: int = 500
    window: int = DEFAULT_WINDOW
    keepalive_interval: float = 15.0
    read_timeout: float | None = None  # default: 2.5 keepalive intervals
    write_timeout: float = 30.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    allow_batching: bool = True
    close_timeout: float = 2.0  # how long a close waits for the peer's close frame
    shutdown_timeout: float = 5.0
    max_hello_bytes: int = 4 * 1024 * 1024
    max_inventory: int = DEFAULT_MAX_INVENTORY
    max_batch: int = DEFAULT_MAX_BATCH
    upstream_rate: float = 1000.0  # messages a second from one node, on average
    upstream_burst: int = 5000

    @classmethod
    def from_config(cls, hub: config.CloudHub) -> HubSettings:
        return settings_from(cls, hub, host=hub.websocket.address, port=hub.websocket.port, allow_batching=hub.batching)


@dataclass(frozen=True)
class Totals:
    acked: int
    retransmits: int
    resync: int
    sessions: int


@dataclass(frozen=True)
class NodeStats:
    desired: int
    pending: int
    inflight: int
    acked: int
    retransmits: int
    resync: int


async def _no_streams(node: NodeName, ws: ServerConnection, path: str, token: str) -> None:
    await ws.close(CloseCode.POLICY_VIOLATION, "this CloudCore serves no streams")


async def _ignore_upstream(node: NodeName, message: Message) -> None:
    log.debug("upstream_ignored", node=node, operation=message.route.operation, resource=message.route.resource)


class CloudHub:
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        settings: HubSettings | None = None,
        upstream: UpstreamHandler | None = None,
    ) -> None:
        self.settings = settings or HubSettings()
        self._ssl = ssl_context
        self.upstream = upstream or _ignore_upstream
        self.stream_acceptor: StreamAcceptor = _no_streams
        self.pool = NodePool(on_change=self._changed)
        self.registry: SessionRegistry[HubLink, CloudSession] = SessionRegistry(self.settings.node_limit)
        self._listeners: list[ConnectionListener] = []
        self._serving: asyncio.Future[int] | None = None
        # counts of sessions that have ended; live sessions are added at read time
        self._ended = Totals(acked=0, retransmits=0, resync=0, sessions=0)
        self.sessions_started = 0
        # Per node: a flood is paced (reliable messages wait: TCP pushes back on that node alone) or, for
        # best-effort ones, dropped; counted here, exported per node.
        self._budgets: dict[NodeName, TokenBucket] = {}
        self.paced: collections.Counter[NodeName] = collections.Counter()
        self.dropped: collections.Counter[NodeName] = collections.Counter()
        self._throttle = Throttle()
        # Sessions start once the desired sets are complete (``open_sessions``); until then connections are
        # accepted and wait, so that edges reconnecting to a restarted CloudCore are not refused and do not
        # back off further while its caches fill. Open by default, for a hub that nothing has to fill.
        self._sessions_open = asyncio.Event()
        self._sessions_open.set()
        self._stopping = False

    def hold_sessions(self) -> None:
        """Accept connections but start no session until ``open_sessions``: the caches are not synced yet, and
        a session diffed against a partial desired set would delete what has simply not been listed yet."""
        self._sessions_open.clear()

    def open_sessions(self) -> None:
        self._sessions_open.set()

    # --- what controllers use ----------------------------------------------------------------------------

    def upsert(self, node: NodeName, obj: DesiredObject) -> None:
        """``node`` should hold ``obj``; an older version than the one already desired is ignored."""
        self.pool.upsert(node, obj)

    def delete(self, node: NodeName, uid: ObjectUid) -> None:
        """``node`` should no longer hold ``uid``; it gets a delete if it has it."""
        self.pool.delete(node, uid)

    def set_objects(self, node: NodeName, objects: Iterable[DesiredObject]) -> None:
        """Replace ``node``'s whole desired set (after a relist, say)."""
        self.pool.set_objects(node, objects)

    def reconcile(self, node: NodeName, uid: ObjectUid) -> None:
        """Check ``uid`` against the edge again: if the edge holds it and it is not desired, it is deleted there."""
        self._changed(node, uid)

    def desired(self, node: NodeName) -> Mapping[ObjectUid, DesiredObject]:
        return self.pool.desired(node)

    def forget_node(self, node: NodeName) -> None:
        """The node is gone from the cluster: drop its desired set (its connection, if any, stays)."""
        self.pool.forget(node)

    def connected_nodes(self) -> frozenset[NodeName]:
        return self.registry.ready_nodes()

    def add_listener(self, listener: ConnectionListener) -> None:
        """``listener(node, connected)`` is called when a node's session is established and when it ends."""
        self._listeners.append(listener)

    async def send(self, node: NodeName, message: Message) -> bool:
        """Send a best-effort message (a query response, say). False if the node is not connected."""
        link = self.registry.ready_link(node)
        if link is None:
            return False
        await link.send(message)
        return True

    def stats(self, node: NodeName) -> NodeStats | None:
        entry = self.registry.get(node)
        if entry is None or entry.session.downstream is None:
            return None
        sync = entry.session.downstream
        return NodeStats(
            desired=len(self.pool.desired(node)),
            pending=sync.sender.pending_count,
            inflight=sync.sender.inflight_count,
            acked=sync.acked,
            retransmits=sync.sender.retransmits,
            resync=sync.resync_count,
        )

    def totals(self) -> Totals:
        acked, retransmits, resync = self._ended.acked, self._ended.retransmits, self._ended.resync
        for _, entry in self.registry.entries():
            sync = entry.session.downstream
            if sync is not None:
                acked += sync.acked
                retransmits += sync.sender.retransmits
                resync += sync.resync_count
        return Totals(acked, retransmits, resync, self.sessions_started)

    def _changed(self, node: NodeName, uid: ObjectUid) -> None:
        entry = self.registry.get(node)
        if entry is not None:
            entry.session.changed(uid)
            entry.link.wake()

    # --- serving -----------------------------------------------------------------------------------------

    async def wait_serving(self) -> int:
        """Wait until the server listens; returns its port (useful with port 0)."""
        if self._serving is None:
            self._serving = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._serving)

    async def serve(self) -> None:
        """Run the server until cancelled, then shut down: stop accepting, close with 1001, drain, give up."""
        s = self.settings
        async with serve(
            self._connection,
            s.host,
            s.port,
            ssl=self._ssl,
            max_size=s.max_frame_bytes,
            max_queue=16,
            write_limit=256 * 1024,
            compression=None,  # CPU and ~50 KiB per connection for little gain on JSON this small
            ping_interval=None,  # the session's own keepalive, with read deadlines on both sides
            close_timeout=s.close_timeout,
            server_header=None,
        ) as server:
            port = self._bound_port(server)
            if self._serving is None:
                self._serving = asyncio.get_running_loop().create_future()
            self._serving.set_result(port)
            log.info("cloudhub_listening", host=s.host, port=port, node_limit=s.node_limit)
            try:
                await asyncio.Future()
            finally:
                await self._shutdown(server)

    @staticmethod
    def _bound_port(server: Server) -> int:
        port: int = next(iter(server.sockets)).getsockname()[1]
        return port

    async def _shutdown(self, server: Server) -> None:
        log.info("cloudhub_stopping", connected=len(self.registry))
        self._stopping = True
        self._sessions_open.set()  # connections still waiting for their session: let them go
        server.close(close_connections=False)  # stop accepting
        closing = [
            asyncio.create_task(entry.link.close(CloseCode.GOING_AWAY, "CloudCore is shutting down"))
            for _, entry in self.registry.entries()
        ]
        if closing:
            _, pending = await asyncio.wait(closing, timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                await server.wait_closed()
        except TimeoutError:
            log.warning("cloudhub_shutdown_incomplete", remaining=len(self.registry))

    async def _connection(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        try:
            node = NodeName(node_name_from_peercert(ws.transport.get_extra_info("peercert")))
        except IdentityError as exc:
            log.warning("connection_refused", peer=peer, reason=str(exc))
            await ws.close(CloseCode.POLICY_VIOLATION, f"not a node certificate: {exc}")
            return
        claimed = ws.request.headers.get("node_id") if ws.request is not None else None
        if claimed and claimed != node:
            reason = f"node_id header {claimed!r} does not match the certificate's node {node!r}"
            log.warning("connection_refused", node=node, peer=peer, reason=reason)
            await ws.close(CloseCode.POLICY_VIOLATION, reason)
            return
        path = ws.request.path if ws.request is not None else ""
        if path.startswith(streams.PATH_PREFIX):  # a stream, not a session: not counted against the node limit
            token = ws.request.headers.get(streams.TOKEN_HEADER, "") if ws.request is not None else ""
            await self.stream_acceptor(node, ws, path, token)
            return
        if not self._sessions_open.is_set():
            await self._sessions_open.wait()
        if self._stopping:
            await ws.close(CloseCode.GOING_AWAY, "CloudCore is shutting down")
            return
        if self.registry.full_for(node):
            log.warning("connection_refused", node=node, peer=peer, reason="node limit reached")
            await ws.close(CloseCode.TRY_AGAIN_LATER, f"node limit of {self.settings.node_limit} reached")
            return
        session, link = self._new_link(node, ws)
        # Claimed before anything is awaited: of several connections of one node arriving at once, each
        # replaces the one before it, and only the last stays.
        previous = self.registry.claim(node, link, session)
        if previous is not None:
            log.info("connection_replaced", node=node, peer=peer)
            await previous.link.close(CloseCode.REPLACED, "replaced by a newer connection from the same node")
        if not self.registry.is_current(node, link):  # replaced itself while the previous one closed
            await link.close(CloseCode.REPLACED, "replaced by a newer connection from the same node")
            return
        await self._serve_node(node, session, link)

    def _new_link(self, node: NodeName, ws: ServerConnection) -> tuple[CloudSession, HubLink]:
        s = self.settings
        loop = asyncio.get_running_loop()
        session = CloudSession(
            node,
            self.pool.live(node),
            now=loop.time(),
            window=s.window,
            keepalive_interval=s.keepalive_interval,
            read_timeout=s.read_timeout,
            allow_batching=s.allow_batching,
            max_inventory=s.max_inventory,
        )
        link = HubLink(
            ws,
            session,
            lambda events: self._on_events(node, session, events),
            name=f"cloudhub.{node}",
            max_frame_bytes=s.max_frame_bytes,
            write_timeout=s.write_timeout,
            close_timeout=s.close_timeout,
            max_first_frame_bytes=s.max_hello_bytes,
            max_batch=s.max_batch,
        )
        return session, link

    async def _serve_node(self, node: NodeName, session: CloudSession, link: HubLink) -> None:
        try:
            await link.run()
        except* Exception:
            log.exception("connection_failed", node=node)
            await link.close(CloseCode.INTERNAL_ERROR, "internal error in CloudCore")
        finally:
            if session.downstream is not None:
                sync = session.downstream
                e = self._ended
                self._ended = Totals(
                    e.acked + sync.acked,
                    e.retransmits + sync.sender.retransmits,
                    e.resync + sync.resync_count,
                    e.sessions,
                )
            released = self.registry.release(node, link)
            if released is not None:
                self._budgets.pop(node, None)
                if released.ready:
                    self._notify(node, connected=False)
            log.info("node_disconnected", node=node, code=link.close_code, reason=link.close_reason)

    def _budget(self, node: NodeName) -> TokenBucket:
        budget = self._budgets.get(node)
        if budget is None:
            s = self.settings
            budget = self._budgets[node] = TokenBucket(
                rate=s.upstream_rate, burst=s.upstream_burst, now=asyncio.get_running_loop().time()
            )
        return budget

    async def _on_events(self, node: NodeName, session: CloudSession, events: list[Event]) -> None:
        loop = asyncio.get_running_loop()
        deliveries: list[Message] = []
        for event in events:
            if isinstance(event, Deliver):
                deliveries.append(event.message)
                continue
            if deliveries:
                await self._deliver(node, session, deliveries)
                deliveries = []
            if isinstance(event, Received):
                if not self._budget(node).try_take(loop.time()):
                    self.dropped[node] += 1
                    if (suppressed := self._throttle.admit((node, "upstream_dropped"))) is not None:
                        log.warning("upstream_dropped", node=node, reason="over its budget", suppressed=suppressed)
                    continue
                await self._call_upstream(node, event.message)
            elif isinstance(event, Ready) and self.registry.mark_ready(node, session):
                self.sessions_started += 1
                log.info("node_connected", node=node, resync=event.resync, batching=event.batching)
                self._notify(node, connected=True)
        if deliveries:
            await self._deliver(node, session, deliveries)

    async def _deliver(self, node: NodeName, session: CloudSession, messages: list[Message]) -> None:
        """Reliable messages from the edge, in order, each acked once handled; one API request per call (twin
        reports about one device are one call), and the node's budget paid per call."""
        loop = asyncio.get_running_loop()
        for message, covered in contract.coalesce_twin_reports(messages):
            delay = self._budget(node).reserve(loop.time())
            if delay > 0:  # over its budget: this node waits, nobody else
                self.paced[node] += 1
                await asyncio.sleep(delay)
            await self._call_upstream(node, message)
            for handled in covered:
                session.delivered(Deliver(handled).seq)

    async def _call_upstream(self, node: NodeName, message: Message) -> None:
        try:
            await self.upstream(node, message)
        except Exception:
            # Acked all the same: a message that breaks its handler would break it again on every resend.
            if (suppressed := self._throttle.admit((node, "upstream_handler_failed"))) is not None:
                log.exception(
                    "upstream_handler_failed",
                    node=node,
                    operation=message.route.operation,
                    resource=message.route.resource,
                    suppressed=suppressed,
                )

    def _notify(self, node: NodeName, *, connected: bool) -> None:
        for listener in self._listeners:
            try:
                listener(node, connected)
            except Exception:
                log.exception("connection_listener_failed", node=node)
