"""Putting the cloud's objects into EdgeCore's store, as EdgeHub does."""

from __future__ import annotations

from typing import Any

from common.messages import Group, Operation, new_message
from edgecore.metamanager.store import Change, MetaStore


async def put(store: MetaStore, kind: str, obj: dict[str, Any], operation: str = Operation.INSERT) -> list[Change]:
    """Apply a cloud message to the store, as EdgeHub does; the changes are what EdgeHub's listeners get."""
    m = obj["metadata"]
    message = new_message(
        source="edgecontroller",
        group=Group.RESOURCE,
        operation=operation,
        resource=f"{m.get('namespace', 'null')}/{kind}/{m['name']}",
        content=obj,
        now_ms=0,
        resourceversion=m["resourceVersion"],
    )
    changes, rejected = await store.apply([message])
    assert changes and not rejected
    return changes
