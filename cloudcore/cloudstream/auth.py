"""Who may use the stream server, decided as the kubelet decides it.

A client is identified by its certificate (verified by TLS against the stream CA: the API server's
kubelet-client certificate; or the kubage CA: another CloudCore replica forwarding a request it already
authorized), or by a bearer token (TokenReview). The API server's identity (the ``system:masters`` group, as
kubeadm's kubelet-client certificate has it) is trusted; any other identity is authorized per request with a
SubjectAccessReview on the node's subresource (``nodes/proxy``, ``nodes/log``, ``nodes/stats``, …), with
the kubelet's cache times (5 min for allowed, 30 s for denied).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from cloudcore.certs import PEER_CN_PREFIX
from cloudcore.kube import Kube, KubeError
from common.logging import get_logger

log = get_logger(__name__)

TRUSTED_GROUPS = frozenset({"system:masters"})
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
SUBRESOURCES = {
    "stats": "stats",
    "metrics": "metrics",
    "logs": "log",
    "spec": "spec",
    "pods": "pods",
    "healthz": "healthz",
    "configz": "configz",
    "checkpoint": "checkpoint",
}
ALLOWED_TTL_S = 300.0
DENIED_TTL_S = 30.0


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    peer: bool = False  # another CloudCore replica, passing on a request it has authorized

    @property
    def trusted(self) -> bool:
        return self.peer or bool(TRUSTED_GROUPS.intersection(self.groups))


def subresource_of(path: str) -> str:
    """The node subresource a kubelet path is authorized as (everything else is ``proxy``)."""
    first = path.lstrip("/").split("/", 1)[0]
    return SUBRESOURCES.get(first, "proxy")


def from_certificate(der: bytes, kubage_ca: x509.Certificate) -> Identity:
    """The identity a verified client certificate carries: CN is the user, O the groups."""
    cert = x509.load_der_x509_certificate(der)
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    groups = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    user = names[0] if names else ""
    peer = False
    if user.startswith(PEER_CN_PREFIX):
        try:
            cert.verify_directly_issued_by(kubage_ca)
            peer = True
        except (ValueError, TypeError, InvalidSignature):
            peer = False  # a CloudCore-looking name from the other CA: an ordinary user
    return Identity(user, groups, peer)


class Authorizer:
    def __init__(self, kube: Kube, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._cache: dict[tuple[str, tuple[str, ...], str, str, str], tuple[float, bool, str]] = {}

    async def from_token(self, token: str) -> Identity | None:
        """The user a bearer token belongs to (TokenReview), or None if it authenticates nobody."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            review = await self._kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
        except KubeError as exc:
            log.warning("token_review_failed", error=str(exc))
            return None
        status: dict[str, Any] = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return Identity(str(user.get("username", "")), tuple(str(g) for g in user.get("groups") or []))

    async def allowed(self, who: Identity, method: str, path: str, node: str) -> tuple[bool, str]:
        """Whether ``who`` may make this request of ``node``, and if not, why."""
        if who.trusted:
            return True, ""
        verb, subresource = VERBS.get(method.upper(), "get"), subresource_of(path)
        key = (who.user, who.groups, verb, subresource, node)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": who.user,
                "groups": list(who.groups),
                "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": subresource, "name": node},
            },
        }
        try:
            answer = await self._kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
        except KubeError as exc:
            return False, f"cannot check authorization: {exc}"
        status = answer.get("status") or {}
        allowed = bool(status.get("allowed"))
        reason = "" if allowed else f'user "{who.user}" may not {verb} nodes/{subresource} of node {node}'
        self._cache[key] = (now + (ALLOWED_TTL_S if allowed else DENIED_TTL_S), allowed, reason)
        return allowed, reason
