"""The stream server: CloudCore answering the API server as if it were each edge node's kubelet.

The API server reaches ``<node address>:<kubelet port>`` (``status.daemonEndpoints.kubeletEndpoint``, which
CloudCore sets to ``commonConfig.tunnelPort``); that address leads here (see the README). One request per TLS
connection:

1. the request head is read (bounded in size and time) and the client identified: its certificate, or a
   bearer token; neither is 401, a certificate from another CA fails at TLS already;
2. the node is found: from the pod for ``/containerLogs``, ``/exec``, ``/attach``, ``/portForward``; for the
   node endpoints (``/healthz``, ``/pods``, ``/stats/summary``, …) from the address the API server dialled:
   the connection's original destination when a DNAT on this host led it here (``SO_ORIGINAL_DST``), else
   its local address, else the ``Host`` header (right for logs, exec and metrics-server's scrapes; the API
   server's node proxy keeps the client's ``Host``);
3. the client is authorized (``auth``), unless it is the API server or a replica passing a request on;
4. the request goes to the node: over a stream from its EdgeCore if its session is here, else to the replica
   holding it (``directory``, mutual TLS between replicas), else it fails at once naming the node and when it
   was last connected. The head and every byte after it pass through unchanged both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from websockets.exceptions import ConnectionClosed

from cloudcore.cloudhub import CloudHub
from cloudcore.cloudstream.auth import Authorizer, Identity, from_certificate
from cloudcore.cloudstream.broker import StreamBroker, StreamUnavailable
from cloudcore.cloudstream.directory import SessionDirectory, offline_message
from cloudcore.edgecontroller.placement import Placement
from common import httphead
from common.httphead import HeadError, RequestHead
from common.logging import get_logger
from common.messages import NodeName
from common.streams import RELAY_CHUNK, StreamError, relay, splice

log = get_logger(__name__)

POD_PATHS = frozenset({"containerLogs", "exec", "attach", "portForward"})
# Why the node cannot be reached is answered 502: the API server shows the message of a 5xx to kubectl, except
# for 503 and 504, whose messages it replaces with generic ones.
BAD_GATEWAY = 502
NODE_HEADER = "X-Kubage-Node"  # which node a request another replica passes on is for (trusted from replicas only)
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h: where a connection was headed before a DNAT rewrote it


@dataclass(frozen=True)
class StreamSettings:
    """What the stream server runs with; ``modules.cloudStream`` documents each field."""

    host: str = "0.0.0.0"  # noqa: S104 - the API server connects from another machine
    port: int = 10003
    head_timeout: float = 10.0
    forward_timeout: float = 10.0


class StreamServer:
    def __init__(
        self,
        *,
        settings: StreamSettings,
        ssl_context: ssl.SSLContext,
        peer_context: ssl.SSLContext | None,
        kubage_ca: x509.Certificate,
        hub: CloudHub,
        broker: StreamBroker,
        placement: Placement,
        authorizer: Authorizer,
        directory: SessionDirectory,
    ) -> None:
        self.settings = settings
        self._ssl = ssl_context
        self._peer_ssl = peer_context  # None: no peer certificate, so no forwarding to other replicas
        self._kubage_ca = kubage_ca
        self._hub = hub
        self._broker = broker
        self._placement = placement
        self._auth = authorizer
        self._directory = directory
        self._serving: asyncio.Future[int] | None = None
        self.requests = 0
        self.forwarded = 0

    async def wait_serving(self) -> int:
        if self._serving is None:
            self._serving = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._serving)

    async def run(self) -> None:
        s = self.settings
        server = await asyncio.start_server(
            self._connection, s.host, s.port, ssl=self._ssl, limit=httphead.MAX_HEAD_BYTES, ssl_handshake_timeout=10
        )
        port = int(server.sockets[0].getsockname()[1])
        if self._serving is None:
            self._serving = asyncio.get_running_loop().create_future()
        self._serving.set_result(port)
        log.info("stream_server_listening", host=s.host, port=port, endpoint=self._directory.endpoint)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            await self._serve(reader, writer)
        except StreamUnavailable as exc:
            log.info("stream_unavailable", status=exc.status, reason=str(exc))
            await _answer(writer, exc.status, str(exc))
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:
            log.exception("stream_failed")
            await _answer(writer, 500, "internal error in CloudCore's stream server")
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await httphead.read_head(reader, timeout=self.settings.head_timeout)
        except HeadError as exc:
            raise StreamUnavailable(exc.status, str(exc)) from None
        who = await self._identify(writer, head)
        if who is None:
            raise StreamUnavailable(
                401, "Unauthorized: present the API server's kubelet client certificate or a bearer token"
            )
        node = (
            NodeName(head.header(NODE_HEADER))
            if who.peer and head.header(NODE_HEADER)
            else self._node_for(head, writer)
        )
        allowed, reason = await self._auth.allowed(who, head.method, head.path, node)
        if not allowed:
            log.warning("stream_forbidden", user=who.user, node=node, path=head.path)
            raise StreamUnavailable(403, f"Forbidden: {reason}")
        head = head.without_header("Authorization").without_header(NODE_HEADER)
        if node in self._hub.connected_nodes():
            async with self._broker.open(node) as pipe:
                log.info("stream_started", node=node, method=head.method, path=head.path, user=who.user)
                await pipe.write(head.encode())
                await relay(pipe, reader, writer)
            return
        holder = await self._directory.holder(node)
        if who.peer or not holder.fresh or not holder.endpoint or holder.endpoint == self._directory.endpoint:
            raise StreamUnavailable(BAD_GATEWAY, offline_message(node, holder))
        await self._forward(holder.endpoint, node, head, reader, writer)

    async def request(
        self,
        node: NodeName,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        limit: int = 256 * 1024 * 1024,
    ) -> NodeResponse:
        """CloudCore's own HTTP request to a node's EdgeCore (the federated jobs' weights): over a stream if the
        node's session is here, else through the replica holding it. The body goes in frames well below the
        frame limit, on the stream's own connection, so it never delays the hub session."""
        extra = dict(headers or {})
        if node in self._hub.connected_nodes():
            try:
                async with self._broker.open(node) as pipe:
                    await pipe.write(_request_head(method, path, node, body, extra))
                    for start in range(0, len(body), RELAY_CHUNK):
                        await pipe.write(body[start : start + RELAY_CHUNK])
                    return await _read_response(pipe.read, limit)
            except StreamUnavailable as exc:
                raise NodeRequestError(str(exc)) from None
            except (ConnectionClosed, StreamError) as exc:
                raise NodeRequestError(f"the stream to node {node} broke: {exc}") from None
        holder = await self._directory.holder(node)
        if not holder.fresh or not holder.endpoint or holder.endpoint == self._directory.endpoint:
            raise NodeRequestError(offline_message(node, holder))
        if self._peer_ssl is None:
            raise NodeRequestError(
                f"node {node} is connected to another CloudCore, and this one has no peer certificate"
            )
        host, _, port = holder.endpoint.rpartition(":")
        try:
            async with asyncio.timeout(self.settings.forward_timeout):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=self._peer_ssl, server_hostname=host.strip("[]")
                )
        except (OSError, TimeoutError, ValueError) as exc:
            raise NodeRequestError(
                f"cannot reach the CloudCore holding node {node} at {holder.endpoint}: {exc}"
            ) from None
        try:
            writer.write(_request_head(method, path, node, body, {**extra, NODE_HEADER: node}) + body)
            await writer.drain()
            self.forwarded += 1
            return await _read_response(lambda: reader.read(RELAY_CHUNK), limit)
        except (ConnectionError, ssl.SSLError) as exc:
            raise NodeRequestError(f"the CloudCore holding node {node} went away: {exc}") from None
        finally:
            writer.close()

    async def _identify(self, writer: asyncio.StreamWriter, head: RequestHead) -> Identity | None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            return from_certificate(der, self._kubage_ca)
        authorization = head.header("Authorization")
        if authorization.lower().startswith("bearer "):
            return await self._auth.from_token(authorization[7:].strip())
        return None

    def _node_for(self, head: RequestHead, writer: asyncio.StreamWriter) -> NodeName:
        parts = [unquote(p) for p in head.path.split("/") if p]
        if parts and parts[0] in POD_PATHS:  # the pod's node, whatever address was dialled (NAT'd nodes share one)
            if len(parts) < 3:
                raise StreamUnavailable(400, f"{head.path} names no namespace and pod")
            namespace, pod = parts[1], parts[2]
            node = self._placement.node_of_pod(namespace, pod)
            if node is None:
                raise StreamUnavailable(404, f'pod "{namespace}/{pod}" is not bound to an edge node')
            return node
        host = dialled_address(writer)
        at_host = self._placement.nodes_at(host) if host else []
        if not at_host:  # a DNAT on another host hid the address: the Host of a request made for the node names it
            host = head.header("Host").rsplit(":", 1)[0].strip("[]")
            at_host = self._placement.nodes_at(host) if host else []
        if len(at_host) != 1:
            known = "no edge node" if not at_host else f"several edge nodes ({', '.join(at_host)})"
            raise StreamUnavailable(404, f"{known} reports the address {host or '(no Host header)'}")
        return at_host[0]

    async def _forward(
        self,
        endpoint: str,
        node: NodeName,
        head: RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """The node's session is on another replica: pass the whole connection on to it."""
        if self._peer_ssl is None:
            raise StreamUnavailable(
                BAD_GATEWAY,
                f"node {node} is connected to another CloudCore ({endpoint}), and this one "
                "has no peer certificate to reach it with",
            )
        host, _, port = endpoint.rpartition(":")
        try:
            async with asyncio.timeout(self.settings.forward_timeout):
                peer_reader, peer_writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=self._peer_ssl, server_hostname=host.strip("[]")
                )
        except (OSError, TimeoutError, ValueError) as exc:
            raise StreamUnavailable(
                502, f"cannot reach the CloudCore holding node {node} at {endpoint}: {exc}"
            ) from None
        self.forwarded += 1
        log.info("stream_forwarded", node=node, to=endpoint, path=head.path)
        peer_writer.write(head.with_header(NODE_HEADER, node).encode())
        await splice(reader, writer, peer_reader, peer_writer)


@dataclass(frozen=True)
class NodeResponse:
    status: int
    headers: httphead.ResponseHead
    body: bytes


class NodeRequestError(Exception):
    """A request to a node's EdgeCore could not be made; the message says why."""


async def _read_response(read: Callable[[], Awaitable[bytes]], limit: int) -> NodeResponse:
    """A whole HTTP response with a Content-Length, from ``read`` (b"" at the end)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await read()
        if not chunk:
            raise NodeRequestError("the node closed the stream before its answer's head")
        buf += chunk
        if len(buf) > httphead.MAX_HEAD_BYTES + limit:
            raise NodeRequestError("the node's answer is too large")
    raw_head, _, body = buf.partition(b"\r\n\r\n")
    try:
        head = httphead.parse_response(raw_head)
        size = int(head.header("Content-Length") or 0)
    except (HeadError, ValueError) as exc:
        raise NodeRequestError(f"the node's answer is not HTTP: {exc}") from None
    if size > limit:
        raise NodeRequestError(f"the node's answer of {size} bytes is more than the {limit} allowed")
    while len(body) < size:
        chunk = await read()
        if not chunk:
            raise NodeRequestError(f"the node's answer ended after {len(body)} of {size} bytes")
        body += chunk
    return NodeResponse(head.status, head, body[:size])


def _request_head(method: str, path: str, node: NodeName, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {node}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def dialled_address(writer: asyncio.StreamWriter) -> str:
    """The IPv4 address the client connected to: before a DNAT if one led it here, else this end's own."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_INET:
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
            return socket.inet_ntoa(raw[4:8])
        except OSError:
            pass  # no DNAT (or no conntrack): the connection came here directly
    sockname = writer.get_extra_info("sockname")
    return str(sockname[0]) if sockname else ""


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
        writer.write(httphead.response(status, reason + "\n"))
        await writer.drain()
