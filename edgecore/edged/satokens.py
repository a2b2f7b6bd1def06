"""Service-account tokens for projected ``serviceAccountToken`` volume sources, as the kubelet keeps them.

A token is asked of the cloud (a TokenRequest bound to the pod: it stops working when the pod is deleted),
kept in SQLite, and asked again once 80 % of its lifetime has passed or it is a day old, as the kubelet's
token manager does. While the cloud cannot be reached the kept token goes on being served until it expires,
so a pod restarted offline still finds a valid token; only a pod that never had one waits for the cloud.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common import upstream
from common.logging import get_logger
from common.messages import Message

log = get_logger(__name__)

REFRESH_AT = 0.8  # of the lifetime: ask for a new token then
MAX_AGE_S = 24 * 3600  # and at the latest after a day
REQUEST_TIMEOUT_S = 10.0

Request = Callable[[Message, float], Awaitable[Message]]  # EdgeHub.request


class TokenStore(Protocol):
    async def token_get(self, key: str) -> tuple[str, float, float] | None: ...
    async def token_put(self, key: str, pod_uid: str, token: str, issued_at: float, expires_at: float) -> None: ...
    async def tokens_forget(self, keep_pods: set[str]) -> int: ...


class TokenUnavailable(Exception):
    """No valid token could be had: none is kept, and the cloud refused or could not be asked."""


def _epoch(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class ServiceAccountTokens:
    def __init__(
        self,
        store: TokenStore,
        request: Request,
        *,
        clock: Callable[[], float] = time.time,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._request = request
        self._clock = clock
        self._now_ms = now_ms
        self._timeout = timeout
        self.requested = 0
        self.served_stale = 0  # tokens served past their refresh time because the cloud could not be asked

    async def token(self, pod: dict[str, Any], audience: str, expiration_seconds: int) -> str:
        """The token for ``pod``'s service account with ``audience`` (empty: the API server's)."""
        m = pod["metadata"]
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        key = f"{m['uid']}/{account}/{audience}/{expiration_seconds}"
        kept = await self._store.token_get(key)
        now = self._clock()
        if kept is not None:
            token, issued, expires = kept
            if now < min(issued + REFRESH_AT * (expires - issued), issued + MAX_AGE_S):
                return token
        try:
            token, expires = await self._ask(pod, account, audience, expiration_seconds)
        except TokenUnavailable as exc:
            if kept is not None and now < kept[2]:
                self.served_stale += 1
                log.info("token_kept", pod=f"{m.get('namespace')}/{m['name']}", reason=str(exc))
                return kept[0]
            raise
        await self._store.token_put(key, m["uid"], token, now, expires)
        return token

    async def forget(self, keep_pods: set[str]) -> None:
        """Drop the tokens of pods that are gone from this node."""
        if await self._store.tokens_forget(keep_pods):
            log.info("tokens_forgotten")

    async def _ask(self, pod: dict[str, Any], account: str, audience: str, seconds: int) -> tuple[str, float]:
        m = pod["metadata"]
        namespace = m.get("namespace", "default")
        message = upstream.token_request(
            namespace,
            account,
            pod=m["name"],
            pod_uid=m["uid"],
            audiences=[audience] if audience else [],
            expiration_seconds=seconds,
            now_ms=self._now_ms(),
        )
        self.requested += 1
        try:
            answer = await self._request(message, self._timeout)
        except Exception as exc:  # not connected, no answer in time: the caller may serve the kept token
            raise TokenUnavailable(f"cannot ask CloudCore for a token: {exc}") from exc
        content = answer.content if isinstance(answer.content, dict) else {}
        if "error" in content:
            raise TokenUnavailable(str(content["error"]))
        status = content.get("status") or {}
        token, expiry = status.get("token"), status.get("expirationTimestamp")
        if not isinstance(token, str) or not token or not isinstance(expiry, str):
            raise TokenUnavailable("CloudCore's answer holds no token")
        try:
            return token, _epoch(expiry)
        except ValueError:
            raise TokenUnavailable(f"CloudCore's answer has a bad expirationTimestamp {expiry!r}") from None
