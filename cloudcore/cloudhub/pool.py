"""The per-node pool: for every edge node, the objects it should hold, keyed by UID. Pure: no I/O, no clock.

Controllers tell it what each node should hold (``upsert``, ``delete``, ``set_objects``) whether or not the
node is connected; a node's session diffs its edge's inventory against ``desired(node)`` and sends the
difference. Every change is reported to ``on_change(node, uid)`` so a live session can look at that object.
A newer version replaces an older one; an older one than the one already desired is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from common.messages import NodeName, ObjectUid
from common.protocol.downstream import DesiredObject
from common.protocol.versions import is_newer

ChangeListener = Callable[[NodeName, ObjectUid], None]


class NodePool:
    def __init__(self, on_change: ChangeListener) -> None:
        self._desired: dict[NodeName, dict[ObjectUid, DesiredObject]] = {}
        self._on_change = on_change

    def upsert(self, node: NodeName, obj: DesiredObject) -> None:
        """``node`` should hold ``obj``; an older version than the one already desired is ignored."""
        desired = self._desired.setdefault(node, {})
        current = desired.get(obj.uid)
        if current is not None and not is_newer(obj.resource_version, current.resource_version):
            return
        desired[obj.uid] = obj
        self._on_change(node, obj.uid)

    def delete(self, node: NodeName, uid: ObjectUid) -> None:
        """``node`` should no longer hold ``uid``; its edge gets a delete if it has it."""
        desired = self._desired.get(node)
        if desired is not None and desired.pop(uid, None) is not None:
            self._on_change(node, uid)

    def set_objects(self, node: NodeName, objects: Iterable[DesiredObject]) -> None:
        """Replace ``node``'s whole desired set (after a relist, say)."""
        wanted = {o.uid: o for o in objects}
        for uid in list(self._desired.get(node, {})):
            if uid not in wanted:
                self.delete(node, uid)
        for obj in wanted.values():
            self.upsert(node, obj)

    def desired(self, node: NodeName) -> Mapping[ObjectUid, DesiredObject]:
        return self._desired.get(node, {})

    def live(self, node: NodeName) -> dict[ObjectUid, DesiredObject]:
        """The node's desired set itself (created empty if need be), for the session that diffs against it."""
        return self._desired.setdefault(node, {})

    def forget(self, node: NodeName) -> None:
        """The node is gone from the cluster: drop its desired set."""
        self._desired.pop(node, None)
