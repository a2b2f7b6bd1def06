"""The informer against the real API server: list, watch from the list's rv, relist diffed into events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from cloudcore.informer import Informer
from cloudcore.kube import Kube
from scripts.harness.cluster import create_namespace
from tests.tunnel import eventually

pytestmark = pytest.mark.kube


async def test_list_watch_and_a_relist_give_every_change_once(kube: Kube) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    await create_namespace(kube, namespace)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    await kube.request("POST", path, body={"metadata": {"name": "before"}, "data": {"v": "1"}})
    events: list[tuple[str, str, str | None]] = []

    def record(kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        if obj["metadata"]["name"] == "kube-root-ca.crt":
            return  # the controller-manager's, in every namespace
        events.append((kind, obj["metadata"]["name"], (obj.get("data") or {}).get("v")))

    informer = Informer(kube, path, name="configmaps", handler=record, watch_timeout=5)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        assert events == [("ADDED", "before", "1")]
        await kube.request("POST", path, body={"metadata": {"name": "during"}, "data": {"v": "1"}})
        await kube.request(
            "PATCH", f"{path}/before", body={"data": {"v": "2"}}, content_type="application/merge-patch+json"
        )
        await kube.request("DELETE", f"{path}/during")
        await eventually(lambda: len(events) == 4)
        assert events[1:] == [("ADDED", "during", "1"), ("MODIFIED", "before", "2"), ("DELETED", "during", "1")]
        assert informer.get(namespace, "before")["data"] == {"v": "2"}  # type: ignore[index]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Changes made while nobody watched reach the handler as events when the informer lists again.
    await kube.request(
        "PATCH", f"{path}/before", body={"data": {"v": "3"}}, content_type="application/merge-patch+json"
    )
    await kube.request("POST", path, body={"metadata": {"name": "after"}, "data": {"v": "1"}})
    events.clear()
    await informer._list()  # what run() does after a 410 Gone
    assert sorted(events) == [("ADDED", "after", "1"), ("MODIFIED", "before", "3")]
