"""A thin raw-JSON client over kubernetes_asyncio's ApiClient.

Controllers work on plain dicts exactly as the API server sends them (what goes down the tunnel is that
JSON), so responses are not turned into generated model objects, which would cost time and lose fields.
kubernetes_asyncio still does what it is good at: kubeconfig and in-cluster credentials, TLS, token refresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client, config

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class KubeError(Exception):
    """The API server refused a request; ``status`` is the HTTP status (404, 409, 410, 422, ...)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str = "") -> Kube:
        """From a kubeconfig file, or from the in-cluster service account when ``kubeconfig`` is empty."""
        configuration = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = 64
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

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
        response: aiohttp.ClientResponse = await self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": JSON, "Content-Type": content_type},
            body=body,  # the REST client serializes it for every JSON content type
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=request_timeout,
        )
        if response.status >= 300:
            raw = await response.read()
            response.release()
            try:
                status = orjson.loads(raw)
                raise KubeError(response.status, str(status.get("reason", "")), str(status.get("message", raw[:200])))
            except orjson.JSONDecodeError:
                raise KubeError(response.status, response.reason or "", raw[:200].decode(errors="replace")) from None
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
        try:
            return orjson.loads(await response.read())
        finally:
            response.release()

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

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
        the watch after ``timeout_seconds``. An expired resourceVersion raises ``KubeError(410)``."""
        params = [
            *(query or []),
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout_seconds),
        ]
        response = await self._call("GET", path, query=params, request_timeout=timeout_seconds + 30)
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event: dict[str, Any] = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise KubeError(
                        int(status.get("code", 500)), str(status.get("reason", "")), str(status.get("message", ""))
                    )
                yield event
        finally:
            response.release()
