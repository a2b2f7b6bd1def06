"""The certificate service (HTTPS, port 10002 as KubeEdge's): how an edge node gets and renews its client
certificate.

* ``GET /ca.crt``: the CA certificate (PEM). The edge fetches it before it trusts anyone, and keeps it only if
  its sha256 matches the one its join token pins.
* ``POST /edge.crt`` (``GET`` with a body, as KubeEdge's edge sends it, works too): a PEM CSR, the header
  ``NodeName: <node>``, and either ``Authorization: Bearer <join token>`` or, to renew, the node's current
  client certificate on the TLS connection. The answer is a certificate whose subject is set here to
  ``CN=system:node:<node>, O=system:nodes``: from the token's node (or the presented certificate's), never
  from the CSR, so a token for one node cannot buy a certificate for another.

Refusals are plain text naming the reason: 400 (bad request or CSR), 401 (missing, malformed, forged or
expired token), 403 (a token or certificate for another node, a node-bound token used before, or a shared
token asked for a name a Node or an earlier certificate holds), 408 (too slow), 411/413 (no or too big a body).

Nothing unauthenticated costs more than a bounded wait: the TLS handshake, the request head and the body each
have a time limit, the head and body a size limit, connections at once a cap, and the token is checked before
the body is read. One request per connection; every refusal is one log line.

Node-bound tokens work once, across every replica: the first use creates a ConfigMap named after the token's
``jti`` in ``kubeedge``; the API server lets exactly one create succeed. Records of expired tokens are removed
when the service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

from cryptography import x509

from cloudcore.certs import NAMESPACE, ensure_namespace
from cloudcore.kube import Conflict, Kube, KubeError, NotFound
from common import httphead
from common.httphead import HeadError, RequestHead
from common.logging import get_logger
from common.pki import CertificateAuthority, CsrError, cert_pem
from common.tls import IdentityError, node_name_from_peercert, valid_node_name
from common.tokens import TokenError, WrongNodeToken, verify

log = get_logger(__name__)

MAX_CSR_BYTES = 16 * 1024
MAX_CONNECTIONS = 256  # at once; one more is closed at once, and logged once a second at most
RECORD_LABEL = "app.kubernetes.io/component"
RECORD_KIND = "join-token"
ISSUED_KIND = "node-certificate"  # a ConfigMap per node name a certificate was issued for by token


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CertService:
    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        kube: Kube,
        ssl_context: ssl.SSLContext,
        host: str,
        port: int,
        signing_days: float,
        namespace: str = NAMESPACE,
        request_timeout: float = 10.0,
    ) -> None:
        self.ca = ca
        self._kube = kube
        self._ssl = ssl_context
        self.host = host
        self.port = port
        self.signing_days = signing_days
        self.namespace = namespace
        self.request_timeout = request_timeout  # each of: TLS handshake, request head, body
        self.issued = 0
        self.refused = 0
        self.serving = asyncio.Event()
        self._open = 0  # connections being served
        self._busy = 0  # connections turned away because MAX_CONNECTIONS were open

    async def run(self) -> None:
        await self._forget_expired_tokens()
        server = await asyncio.start_server(
            self._connection,
            self.host,
            self.port,
            ssl=self._ssl,
            ssl_handshake_timeout=self.request_timeout,
            limit=httphead.MAX_HEAD_BYTES,
        )
        async with server:
            self.serving.set()
            log.info("certservice_serving", address=f"{self.host}:{self.port}")
            try:
                await server.serve_forever()
            finally:
                self.serving.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self._busy += 1
            if self._busy == 1 or self._busy % 100 == 0:
                log.warning("certservice_busy", open=self._open, turned_away=self._busy)
            writer.close()
            return
        self._open += 1
        try:
            status, body, content_type = await self._answer(reader, writer)
            writer.write(
                f"HTTP/1.1 {status} {httphead.REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # the client went away
        finally:
            self._open -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes, str]:
        try:
            head = await httphead.read_head(reader, timeout=self.request_timeout)
        except HeadError as exc:
            return exc.status, f"{exc}\n".encode(), "text/plain"
        if head.path == "/ca.crt" and head.method == "GET":
            return 200, self.ca.cert_pem, "application/x-pem-file"
        if head.path != "/edge.crt" or head.method not in ("GET", "POST"):
            return 404, b"only GET /ca.crt and POST /edge.crt are served here\n", "text/plain"
        node = head.header("NodeName")
        try:
            cert, how = await self._issue(head, reader, writer, node)
        except Refused as exc:
            self.refused += 1
            log.warning("certificate_refused", node=node, status=exc.status, reason=exc.reason)
            return exc.status, f"{exc.reason}\n".encode(), "text/plain"
        self.issued += 1
        log.info("certificate_issued", node=node, how=how, not_after=cert.not_valid_after_utc.isoformat())
        return 200, cert_pem(cert), "application/x-pem-file"

    async def _issue(
        self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: str
    ) -> tuple[x509.Certificate, str]:
        if not valid_node_name(node):
            raise Refused(400, f"header NodeName must be a valid node name, got {node!r}")
        peer = _peer_certificate(writer)
        if peer is not None:  # who asks is settled before the body is read
            how, record = self._renewal(peer, node), None
        else:
            how, record = self._join(head, node)
            if record is None:
                await self._name_is_free(node)
        csr = await _body(head, reader, self.request_timeout)
        try:
            cert = self.ca.sign_node_csr(csr, node, days=self.signing_days)
        except CsrError as exc:
            raise Refused(400, f"bad CSR: {exc}") from None
        if record is not None:  # last: a request refused for any other reason leaves the token unused
            await self._use_once(*record, node=node)
        if how == "token":  # claimed before the certificate leaves: of two joins racing for a name, one wins
            await self._claim_name(node, shared=record is None)
        return cert, how

    async def _name_is_free(self, node: str) -> None:
        """A shared token joins new nodes only: never one a Node already holds (that one renews with its
        certificate, or re-joins with a token bound to it)."""
        try:
            exists = await self._kube.get_or_none(f"/api/v1/nodes/{node}") is not None
        except KubeError as exc:
            raise Refused(503, f"cannot check whether node {node!r} exists: {exc}") from None
        if exists:
            raise Refused(
                403,
                f"node {node!r} exists already: a shared token joins new nodes only; "
                f"use a token for it (keadm gettoken --node {node})",
            )

    async def _claim_name(self, node: str, *, shared: bool) -> None:
        """Record that a certificate for ``node`` was issued by token. A shared token may only claim a name
        nobody claimed before; a token bound to the node may always re-join it."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": _issued(node),
                "namespace": self.namespace,
                "labels": {RECORD_LABEL: ISSUED_KIND, "app.kubernetes.io/part-of": "kubage"},
            },
            "data": {"node": node, "issuedAt": str(int(time.time()))},
        }
        try:
            await self._create_record(body)
        except Conflict:
            if shared:
                raise Refused(
                    403,
                    f"a certificate for node {node!r} was issued before: a shared token joins new nodes only; "
                    f"use a token for it (keadm gettoken --node {node})",
                ) from None
        except KubeError as exc:
            raise Refused(503, f"cannot record the certificate for node {node!r}: {exc}") from None

    async def _create_record(self, body: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        try:
            await self._kube.request("POST", path, body=body)
        except NotFound:  # CloudCore with its CA from files: nobody created the namespace yet
            await ensure_namespace(self._kube, self.namespace)
            await self._kube.request("POST", path, body=body)

    def _renewal(self, peer: dict[str, Any], node: str) -> str:
        try:
            holder = node_name_from_peercert(peer)
        except IdentityError as exc:
            raise Refused(403, f"the client certificate is not a node's: {exc}") from None
        if holder != node:
            raise Refused(403, f"the client certificate is for node {holder!r}, not {node!r}")
        return "renewal"

    def _join(self, head: RequestHead, node: str) -> tuple[str, tuple[str, int] | None]:
        scheme, _, token = head.header("Authorization").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "no join token: send 'Authorization: Bearer <token from keadm gettoken>'")
        try:
            claims = verify(self.ca, token, node=node)
        except WrongNodeToken as exc:
            raise Refused(403, str(exc)) from None
        except TokenError as exc:
            raise Refused(401, str(exc)) from None
        return "token", (claims.jti, claims.exp) if claims.node is not None else None

    async def _use_once(self, jti: str, exp: int, *, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"join-token-{jti}",
                "namespace": self.namespace,
                "labels": {RECORD_LABEL: RECORD_KIND, "app.kubernetes.io/part-of": "kubage"},
            },
            "data": {"node": node, "expires": str(exp), "usedAt": str(int(time.time()))},
        }
        try:
            await self._create_record(body)
        except Conflict:
            raise Refused(403, f"token already used (it was bound to node {node!r} and works once)") from None
        except KubeError as exc:
            raise Refused(503, f"cannot record the token's use: {exc}") from None

    async def _forget_expired_tokens(self) -> None:
        try:
            records, _ = await self._kube.list_all(
                f"/api/v1/namespaces/{self.namespace}/configmaps",
                query=[("labelSelector", f"{RECORD_LABEL}={RECORD_KIND}")],
            )
            now = time.time()
            for record in records:
                if int((record.get("data") or {}).get("expires", "0")) < now:
                    name = record["metadata"]["name"]
                    await self._kube.request("DELETE", f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        except (KubeError, ValueError) as exc:  # housekeeping only: the service works without it
            log.warning("token_records_not_cleaned", error=str(exc))


def _issued(node: str) -> str:
    return f"node-certificate-{node}"


def _peer_certificate(writer: asyncio.StreamWriter) -> dict[str, Any] | None:
    """The client certificate on the connection, already verified against our CA (CERT_OPTIONAL)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    peer = ssl_object.getpeercert()
    return peer or None


async def _body(head: RequestHead, reader: asyncio.StreamReader, limit_s: float) -> bytes:
    """The CSR: a Content-Length body of at most MAX_CSR_BYTES, read within ``limit_s``."""
    if head.header("Transfer-Encoding"):
        raise Refused(411, "send the CSR with a Content-Length, not chunked")
    try:
        length = int(head.header("Content-Length") or "0")
    except ValueError:
        raise Refused(400, "Content-Length must be a number") from None
    if length <= 0:
        raise Refused(400, "the request body must be a PEM certificate signing request")
    if length > MAX_CSR_BYTES:
        raise Refused(413, f"a CSR of {length} bytes is larger than {MAX_CSR_BYTES}")
    try:
        async with asyncio.timeout(limit_s):
            return await reader.readexactly(length)
    except TimeoutError:
        raise Refused(408, f"the CSR did not arrive within {limit_s:g} s") from None
    except asyncio.IncompleteReadError:
        raise Refused(400, "the connection closed before the CSR was complete") from None
