"""A thin raw-JSON client for the API server (aiohttp), and the one error family it raises.

Controllers work on plain dicts exactly as the API server sends them (what goes down the tunnel is that
JSON), so responses are not turned into generated model objects, which would cost time and lose fields.
Credentials come from ``cloudcore.kubeconfig`` (a kubeconfig file, or in-cluster).

Errors are grouped by what the caller should do, converted here and nowhere else::

    KubeError                   anything this client raises
    ├── ApiError                the API server answered with an error status (``status``, ``reason``)
    │   ├── ClientError         4xx: the request is wrong for the server's current state
    │   │   ├── Invalid         400, 422: the object or the request does not validate
    │   │   ├── Forbidden       403: the credentials may not do this
    │   │   ├── NotFound        404
    │   │   ├── Conflict        409: already exists, or a resourceVersion/UID precondition failed
    │   │   ├── Gone            410: the resourceVersion to watch from is too old; relist
    │   │   └── TooManyRequests 429: the server is shedding load; retry later
    │   └── ServerError         5xx: retry later
    └── KubeUnavailable         no answer at all (connection refused, TLS, timeout); retry later

``retryable(exc)`` says whether trying the same request again later may succeed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import aiohttp
import orjson

from cloudcore.kubeconfig import Credentials, from_kubeconfig, in_cluster
from common.protocol.ratelimit import TokenBucket

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)

T = TypeVar("T")


class KubeError(Exception):
    """Anything the client raises: a refusal by the API server, or no answer from it."""


class KubeUnavailable(KubeError):
    """The API server could not be reached or did not answer in time; the cause is chained."""


class ApiError(KubeError):
    """The API server refused a request; ``status`` is the HTTP status, ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ClientError(ApiError):
    """4xx: the same request would get the same answer (except TooManyRequests)."""


class Invalid(ClientError):
    """400 or 422: the request or the object does not validate."""


class Forbidden(ClientError):
    """403: the credentials are not allowed to do this."""


class NotFound(ClientError):
    """404."""


class Conflict(ClientError):
    """409: the object already exists, or a resourceVersion or UID precondition failed."""


class Gone(ClientError):
    """410: the resourceVersion is too old to watch from; list again."""


class TooManyRequests(ClientError):
    """429: the API server is shedding load; try again later."""


class ServerError(ApiError):
    """5xx: the API server failed; try again later."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: Invalid,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def api_error(status: int, reason: str, message: str) -> ApiError:
    """The error for an HTTP status: the most specific class there is for it."""
    if status >= 500:
        return ServerError(status, reason, message)
    return _BY_STATUS.get(status, ClientError)(status, reason, message)


def retryable(exc: BaseException) -> bool:
    """Whether the same request may succeed later: no answer, 5xx, or 429."""
    return isinstance(exc, KubeUnavailable | ServerError | TooManyRequests)


async def _answered(call: Awaitable[T], what: str) -> T:
    """``call``'s result; a transport failure becomes KubeUnavailable, chained."""
    try:
        return await call
    except TRANSPORT_ERRORS as exc:
        raise KubeUnavailable(f"{what}: {exc or type(exc).__name__}") from exc


@contextlib.contextmanager
def _held(response: aiohttp.ClientResponse) -> Iterator[aiohttp.ClientResponse]:
    """``response`` until its body is done with; one left before its end (a watch stopped, a read cancelled or
    failed) has its connection aborted, not closed.

    That connection cannot be reused either way, and a graceful TLS close keeps the socket open until the API
    server answers close_notify: 2.7 s measured for a watch, up to asyncio's 30 s. (Bodies are read from
    ``response.content``: ``response.read()`` closes gracefully by itself when it fails, and then cannot be
    aborted.)
    """
    connection = response.connection
    transport = connection.transport if connection is not None else None
    try:
        yield response
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    finally:
        response.release()


def request_kind(method: str, path: str, query: list[tuple[str, Any]] | None) -> tuple[str, str]:
    """(verb, resource) of a request as the API server's ``apiserver_request_total`` names them: a GET of a
    collection is a LIST, one with ``watch`` a WATCH; the resource is ``pods``, ``pods/status`` and so on."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return method, ""  # /metrics, /readyz, /version
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource; "namespaces/<name>" alone is the namespace itself
    resource = rest[0] if rest else ""
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    verb = method
    if method == "GET":
        if any(key == "watch" for key, _ in query or []):
            verb = "WATCH"
        elif len(rest) == 1:
            verb = "LIST"
    return verb, resource


class Kube:
    def __init__(self, credentials: Credentials, *, qps: float | None = None, burst: int = 1) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the running loop
        self._limiter = TokenBucket(rate=qps, burst=burst, now=0.0) if qps is not None else None
        # Requests sent, by (verb, resource) as the API server counts them: what a reconnect storm costs it.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()

    @classmethod
    async def connect(cls, kubeconfig: str = "", *, master: str = "", qps: float | None = None, burst: int = 1) -> Kube:
        """From a kubeconfig file, or from the in-cluster service account when ``kubeconfig`` is empty;
        KubeconfigError when neither can be used.

        ``master`` replaces the API server address either gives; ``qps`` and ``burst`` limit the request rate
        on this side, as client-go does (None: no limit)."""
        credentials = from_kubeconfig(kubeconfig) if kubeconfig else in_cluster()
        if master:
            credentials.server = master.rstrip("/")
        return cls(credentials, qps=qps, burst=burst)

    @property
    def host(self) -> str:
        return self.credentials.server

    @property
    def ca_file(self) -> str:
        """The file of the CA that signs the API server's certificate ("" if the system's CAs do)."""
        return self.credentials.ca_file

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=64, ssl=self.credentials.ssl_context or False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _wait_turn(self) -> None:
        if self._limiter is not None:
            delay = self._limiter.reserve(asyncio.get_running_loop().time())
            if delay > 0:
                await asyncio.sleep(delay)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = JSON,
        request_timeout: float | None = 30.0,
    ) -> aiohttp.ClientResponse:
        await self._wait_turn()
        self.requests[request_kind(method, path, query)] += 1
        headers = {"Accept": JSON, "Content-Type": content_type}
        try:
            authorization = self.credentials.authorization()
        except OSError as exc:
            raise KubeUnavailable(f"{method} {path}: service account token: {exc}") from exc
        if authorization:
            headers["Authorization"] = authorization
        response: aiohttp.ClientResponse = await _answered(
            self._client().request(
                method,
                self.credentials.server + path,
                params=[(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query or []],
                data=None if body is None else orjson.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=request_timeout),
            ),
            f"{method} {path}",
        )
        if response.status >= 300:
            with _held(response):
                raw = await _answered(response.content.read(), f"{method} {path}")
            try:
                status = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise api_error(response.status, response.reason or "", raw[:200].decode(errors="replace")) from None
            if not isinstance(status, dict):
                status = {}
            raise api_error(response.status, str(status.get("reason", "")), str(status.get("message", raw[:200])))
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        response = await self._call(method, path, query=query, body=body, content_type=content_type)
        with _held(response):
            return orjson.loads(await _answered(response.content.read(), f"{method} {path}"))

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def get_text(self, path: str) -> str:
        """A path that answers plain text (``/metrics``, ``/readyz?verbose``)."""
        response = await self._call("GET", path)
        with _held(response):
            return (await _answered(response.content.read(), f"GET {path}")).decode(errors="replace")

    async def get_or_none(self, path: str) -> Any:
        """The object, or None when it does not exist."""
        try:
            return await self.get(path)
        except NotFound:
            return None

    async def list_all(self, path: str, *, query: list[tuple[str, Any]] | None = None) -> tuple[list[Any], str]:
        """All items (following ``continue``) and the list's resourceVersion to watch from."""
        items: list[Any] = []
        params = [*(query or []), ("limit", 500)]
        token = ""
        while True:
            page = await self.request("GET", path, query=[*params, ("continue", token)] if token else params)
            items.extend(page.get("items") or [])
            token = page.get("metadata", {}).get("continue") or ""
            if not token:
                return items, str(page["metadata"]["resourceVersion"])

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) from ``resource_version``, with bookmarks, until the server ends
        the watch after ``timeout_seconds``. An expired resourceVersion raises ``Gone``."""
        params = [
            *(query or []),
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout_seconds),
        ]
        response = await self._call("GET", path, query=params, request_timeout=timeout_seconds + 30)
        with _held(response):
            lines = response.content.__aiter__()
            while True:
                try:
                    line = await _answered(lines.__anext__(), f"watch {path}")
                except StopAsyncIteration:
                    return
                if not line.strip():
                    continue
                event: dict[str, Any] = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise api_error(
                        int(status.get("code", 500)), str(status.get("reason", "")), str(status.get("message", ""))
                    )
                yield event
