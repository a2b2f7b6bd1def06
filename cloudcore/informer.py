"""List, then watch from the list's resourceVersion; relist on 410 Gone; reconnect with backoff.

One informer per resource keeps a cache of the objects as the API server sent them (plain dicts, keyed by
``namespace/name``) and calls its handler for every change, in order. A relist is diffed against the cache,
so handlers see the same adds, updates and deletes they would have seen from an unbroken watch: nothing
downstream needs to know that a watch broke. Handlers are synchronous and must not block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from cloudcore.kube import Gone, Kube, KubeError, NotFound
from common.logging import get_logger
from common.protocol.backoff import backoff_delays

log = get_logger(__name__)

# (event type, object, previous object or None)
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


def object_key(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata['name']}" if namespace else str(metadata["name"])


class Informer:
    def __init__(
        self,
        kube: Kube,
        path: str,
        *,
        name: str,
        handler: Handler,
        query: list[tuple[str, Any]] | None = None,
        delays: Callable[[], Iterator[float]] = backoff_delays,
        watch_timeout: int = 300,
    ) -> None:
        self._kube = kube
        self._path = path
        self.name = name
        self._handler = handler
        self._query = query or []
        self._delays = delays
        self._watch_timeout = watch_timeout
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.watch_restarts = 0  # watches that ended in an error (not the server's normal timeout)
        self.relists = 0

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    async def run(self) -> None:
        delays = self._delays()
        while True:
            try:
                await self._list()
                delays = self._delays()
                while True:
                    await self._watch()  # returns when the server ends the watch; continue from the last rv
            except Gone:
                log.info("watch_expired", informer=self.name, rv=self.resource_version)
                self.relists += 1
                continue  # the rv is too old: relist at once
            except NotFound as exc:
                if not self.synced.is_set():
                    # The resource is not served (its CRD is not installed): nothing to cache yet, and
                    # nothing that waits for the caches should wait for this one. Look again later.
                    log.warning("resource_not_installed", informer=self.name, path=self._path)
                    self.synced.set()
                self._restarted(exc)
            except KubeError as exc:
                self._restarted(exc)
            await asyncio.sleep(next(delays))

    def _restarted(self, exc: Exception) -> None:
        self.watch_restarts += 1
        log.warning("watch_failed", informer=self.name, error=str(exc) or type(exc).__name__)

    async def _list(self) -> None:
        items, rv = await self._kube.list_all(self._path, query=self._query)
        fresh = {object_key(obj): obj for obj in items}
        old = self.cache
        self.cache = fresh
        self.resource_version = rv
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._emit(ADDED, obj, None)
            elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit(MODIFIED, obj, before)
        for key, before in old.items():
            if key not in fresh:
                self._emit(DELETED, before, before)
        if not self.synced.is_set():
            log.info("informer_synced", informer=self.name, objects=len(fresh), rv=rv)
            self.synced.set()

    async def _watch(self) -> None:
        async for event in self._kube.watch(
            self._path, self.resource_version, query=self._query, timeout_seconds=self._watch_timeout
        ):
            kind, obj = event["type"], event["object"]
            self.resource_version = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            key = object_key(obj)
            before = self.cache.get(key)
            if kind == DELETED:
                self.cache.pop(key, None)
            else:
                self.cache[key] = obj
                kind = ADDED if before is None else MODIFIED
            self._emit(kind, obj, before)

    def _emit(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        try:
            self._handler(kind, obj, before)
        except Exception:
            log.exception("informer_handler_failed", informer=self.name, key=object_key(obj))
