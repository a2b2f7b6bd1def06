"""CloudHub's pure parts: the per-node pool and the session registry, with no server and no event loop."""

from __future__ import annotations

from cloudcore.cloudhub.pool import NodePool
from cloudcore.cloudhub.registry import SessionRegistry
from common.messages import NodeName, ObjectUid
from common.protocol.downstream import DesiredObject

A, B, C = NodeName("a"), NodeName("b"), NodeName("c")


def obj(uid: str, rv: str) -> DesiredObject:
    return DesiredObject(ObjectUid(uid), rv, f"default/pod/{uid}", {"metadata": {"uid": uid}})


def test_the_pool_keeps_the_newest_version_and_reports_each_change() -> None:
    changes: list[tuple[NodeName, ObjectUid]] = []
    pool = NodePool(on_change=lambda node, uid: changes.append((node, uid)))
    pool.upsert(A, obj("p", "5"))
    pool.upsert(A, obj("p", "4"))  # older: ignored, no change
    pool.upsert(A, obj("p", "6"))
    pool.set_objects(A, [obj("q", "1")])  # p goes, q comes
    pool.delete(A, ObjectUid("nothing"))  # not held: no change
    assert dict(pool.desired(A)) == {"q": obj("q", "1")}
    assert changes == [(A, "p"), (A, "p"), (A, "p"), (A, "q")]
    assert pool.desired(B) == {}


def test_the_registry_keeps_one_link_per_node_and_counts_nodes_against_the_limit() -> None:
    registry: SessionRegistry[str, str] = SessionRegistry(node_limit=2)
    assert registry.claim(A, "a1", "s1") is None
    replaced = registry.claim(A, "a2", "s2")  # the same node again: replaces, does not count twice
    assert replaced is not None and replaced.link == "a1"
    assert not registry.is_current(A, "a1") and registry.is_current(A, "a2")
    assert not registry.mark_ready(A, "s1") and registry.mark_ready(A, "s2")
    assert registry.release(A, "a1") is None  # the replaced link ending forgets nothing
    registry.claim(B, "b1", "t1")
    assert registry.full_for(C) and not registry.full_for(A)
    assert registry.ready_nodes() == {A} and registry.ready_link(B) is None
    released = registry.release(A, "a2")
    assert released is not None and released.ready and len(registry) == 1
