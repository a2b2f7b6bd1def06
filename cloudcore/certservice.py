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
expired token), 403 (a token or certificate for another node, or a node-bound token used before).

Node-bound tokens work once, across every replica: the first use creates a ConfigMap named after the token's
``jti`` in ``kubeedge``; the API server lets exactly one create succeed. Records of expired tokens are removed
when the service starts.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from aiohttp import web
from cryptography import x509

from cloudcore.certs import NAMESPACE
from cloudcore.kube import Conflict, Kube, KubeError
from common.logging import get_logger
from common.pki import CertificateAuthority, CsrError, cert_pem
from common.tls import IdentityError, node_name_from_peercert, valid_node_name
from common.tokens import TokenError, WrongNodeToken, verify

log = get_logger(__name__)

MAX_CSR_BYTES = 16 * 1024
RECORD_LABEL = "app.kubernetes.io/component"
RECORD_KIND = "join-token"


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
    ) -> None:
        self.ca = ca
        self._kube = kube
        self._ssl = ssl_context
        self.host = host
        self.port = port
        self.signing_days = signing_days
        self.namespace = namespace
        self.issued = 0
        self.refused = 0
        self.serving = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CSR_BYTES)
        app.router.add_get("/ca.crt", self._ca)
        app.router.add_route("POST", "/edge.crt", self._edge_cert)
        app.router.add_route("GET", "/edge.crt", self._edge_cert)
        return app

    async def run(self) -> None:
        await self._forget_expired_tokens()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl, shutdown_timeout=1.0)
            await site.start()
            self.serving.set()
            log.info("certservice_serving", address=f"{self.host}:{self.port}")
            await asyncio.Event().wait()
        finally:
            self.serving.clear()
            await runner.cleanup()

    async def _ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self.ca.cert_pem, content_type="application/x-pem-file")

    async def _edge_cert(self, request: web.Request) -> web.Response:
        node = request.headers.get("NodeName", "")
        try:
            cert, how = await self._issue(request, node)
        except Refused as exc:
            self.refused += 1
            log.warning("certificate_refused", node=node, status=exc.status, reason=exc.reason)
            return web.Response(status=exc.status, text=exc.reason + "\n")
        self.issued += 1
        log.info("certificate_issued", node=node, how=how, not_after=cert.not_valid_after_utc.isoformat())
        return web.Response(body=cert_pem(cert), content_type="application/x-pem-file")

    async def _issue(self, request: web.Request, node: str) -> tuple[x509.Certificate, str]:
        if not valid_node_name(node):
            raise Refused(400, f"header NodeName must be a valid node name, got {node!r}")
        csr = await request.read()
        if not csr:
            raise Refused(400, "the request body must be a PEM certificate signing request")
        peer = _peer_certificate(request)
        if peer is not None:
            how, record = self._renewal(peer, node), None
        else:
            how, record = self._join(request, node)
        try:
            cert = self.ca.sign_node_csr(csr, node, days=self.signing_days)
        except CsrError as exc:
            raise Refused(400, f"bad CSR: {exc}") from None
        if record is not None:  # last: a request refused for any other reason leaves the token unused
            await self._use_once(*record, node=node)
        return cert, how

    def _renewal(self, peer: dict[str, Any], node: str) -> str:
        try:
            holder = node_name_from_peercert(peer)
        except IdentityError as exc:
            raise Refused(403, f"the client certificate is not a node's: {exc}") from None
        if holder != node:
            raise Refused(403, f"the client certificate is for node {holder!r}, not {node!r}")
        return "renewal"

    def _join(self, request: web.Request, node: str) -> tuple[str, tuple[str, int] | None]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
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
            await self._kube.request("POST", f"/api/v1/namespaces/{self.namespace}/configmaps", body=body)
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


def _peer_certificate(request: web.Request) -> dict[str, Any] | None:
    """The client certificate on the connection, already verified against our CA (CERT_OPTIONAL)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    if ssl_object is None:
        return None
    peer = ssl_object.getpeercert()
    return peer or None
