"""Hypothesis properties over arbitrary interleavings of updates, deletes, drops, duplicates, reorderings
and reconnects between a CloudSession and an EdgeSession. No event loop, no sockets: the network is two lists.

After any history, once the link behaves: the edge holds exactly the cloud's desired set at the newest
versions; no older version of an object is ever applied after a newer one; a duplicate changes nothing; and
the cloud has received the latest value of every outbox key, each key's values in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.messages import Message, NodeName, ObjectUid, decode, encode
from common.protocol.downstream import DesiredObject, object_uid, should_apply
from common.protocol.outbox import Outbox, OutboxItem
from common.protocol.session import CloudSession, Deliver, EdgeSession, Received
from common.protocol.versions import is_newer

UIDS = [ObjectUid(f"uid-{i}") for i in range(5)]
KEYS = [f"podstatus/default/p{i}" for i in range(3)]


@dataclass
class World:
    now: float = 0.0
    rv: int = 0
    desired: dict[ObjectUid, DesiredObject] = field(default_factory=dict)
    edge_store: dict[ObjectUid, str] = field(default_factory=dict)
    max_applied: dict[ObjectUid, int] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=lambda: Outbox(window=2))
    last_put: dict[str, int] = field(default_factory=dict)
    cloud_got: dict[str, list[int]] = field(default_factory=dict)
    c2e: list[bytes] = field(default_factory=list)
    e2c: list[bytes] = field(default_factory=list)
    cloud: CloudSession | None = None
    edge: EdgeSession | None = None

    def connect(self) -> None:
        if self.edge is not None:
            self.edge.close()
        self.c2e.clear()
        self.e2c.clear()  # a new TCP connection: nothing of the old one arrives any more
        self.cloud = CloudSession(NodeName("n1"), self.desired, now=self.now, window=3, retransmit_after=1.0)
        self.edge = EdgeSession(dict(self.edge_store), self.outbox, now=self.now)
        # The handshake is covered by its own tests; here it completes so histories reach deep states.
        self.deliver_to_cloud(encode(self.edge.hello(self.now, 0)))
        self.c2e.extend(encode(m) for m in self.cloud.messages_to_send(self.now, 0))
        self.deliver_to_edge(self.c2e.pop(0))

    def upsert(self, i: int) -> None:
        self.rv += 1
        uid = UIDS[i]
        content = {"metadata": {"uid": uid, "name": f"o{i}", "resourceVersion": str(self.rv)}}
        self.desired[uid] = DesiredObject(uid, str(self.rv), f"default/pod/o{i}", content)
        if self.cloud is not None:
            self.cloud.changed(uid)

    def delete(self, i: int) -> None:
        uid = UIDS[i]
        if self.desired.pop(uid, None) is not None and self.cloud is not None:
            self.cloud.changed(uid)

    def put(self, k: int) -> None:
        version = self.outbox.next_version()
        self.outbox.put(OutboxItem(KEYS[k], version, "resource", "update", KEYS[k], {"v": version}))
        self.last_put[KEYS[k]] = version

    def flush(self) -> None:
        assert self.cloud is not None and self.edge is not None
        self.c2e.extend(encode(m) for m in self.cloud.messages_to_send(self.now, 0))
        self.e2c.extend(encode(m) for m in self.edge.messages_to_send(self.now, 0))

    def deliver_to_edge(self, frame: bytes) -> None:
        assert self.edge is not None
        for message in decode(frame):
            for event in self.edge.receive(message, self.now, 0):
                if isinstance(event, Deliver):
                    self.apply(event.message)
                    self.edge.delivered(event.seq)
                assert not isinstance(event, Received)

    def apply(self, message: Message) -> None:
        uid = object_uid(message)
        before = dict(self.edge_store)
        if not should_apply(message, self.edge_store.get(uid)):
            return
        if message.route.operation == "delete":
            del self.edge_store[uid]
            return
        rv = int(message.header.resourceversion)
        assert rv > self.max_applied.get(uid, 0), f"{uid}: rv {rv} applied after {self.max_applied[uid]}"
        self.max_applied[uid] = rv
        self.edge_store[uid] = message.header.resourceversion
        assert set(before) <= set(self.edge_store)

    def deliver_to_cloud(self, frame: bytes) -> None:
        assert self.cloud is not None
        for message in decode(frame):
            for event in self.cloud.receive(message, self.now, 0):
                if isinstance(event, Deliver):
                    values = self.cloud_got.setdefault(message.route.resource, [])
                    version = message.content["v"]
                    assert not values or version >= values[-1], "a key's values arrived out of order"
                    values.append(version)
                    self.cloud.delivered(event.seq)
        assert self.edge is not None

    def settle(self) -> None:
        """Let a healthy link run until both sides are idle."""
        self.connect()
        for _ in range(200):
            assert self.edge is not None and self.cloud is not None
            self.flush()
            quiet = not self.c2e and not self.e2c
            if quiet and self.cloud.downstream is not None and self.cloud.downstream.in_sync() and self.outbox.idle():
                return
            while self.e2c or self.c2e:
                if self.e2c:
                    self.deliver_to_cloud(self.e2c.pop(0))
                if self.c2e:
                    self.deliver_to_edge(self.c2e.pop(0))
            self.now += 0.01
        raise AssertionError("did not settle")


# Deliveries dominate, as on a real link; faults are frequent enough to hit every path.
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["to_edge", "to_cloud"]), st.integers(0, 3)),
        st.tuples(st.sampled_from(["to_edge", "to_cloud"]), st.just(0)),
        st.tuples(st.just("upsert"), st.integers(0, len(UIDS) - 1)),
        st.tuples(st.just("delete"), st.integers(0, len(UIDS) - 1)),
        st.tuples(st.just("put"), st.integers(0, len(KEYS) - 1)),
        st.tuples(st.sampled_from(["drop_c2e", "drop_e2c", "dup_c2e", "dup_e2c"]), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.integers(1, 30)),
        st.tuples(st.just("reconnect"), st.just(0)),
    ),
    min_size=10,
    max_size=120,
)


def run(world: World, history: list[tuple[str, int]]) -> None:
    world.connect()
    for op, arg in history:
        world.flush()  # the I/O layer asks both sides for output whenever anything happened
        if op == "upsert":
            world.upsert(arg)
        elif op == "delete":
            world.delete(arg)
        elif op == "put":
            world.put(arg)
        elif op == "tick":
            world.now += arg / 10
            world.flush()
        elif op == "reconnect":
            world.connect()
        else:
            queue = world.c2e if op in ("to_edge", "drop_c2e", "dup_c2e") else world.e2c
            if not queue:
                continue
            i = arg % len(queue)  # any frame, not just the first: reordering
            if op.startswith("drop"):
                queue.pop(i)
            elif op.startswith("dup"):
                queue.insert(i, queue[i])
            elif op == "to_edge":
                world.deliver_to_edge(queue.pop(i))
            else:
                world.deliver_to_cloud(queue.pop(i))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(steps)
def test_edge_converges_to_the_desired_set_and_outbox_delivers_the_latest(history: list[tuple[str, int]]) -> None:
    world = World()
    run(world, history)
    world.settle()
    assert world.edge_store == {uid: obj.resource_version for uid, obj in world.desired.items()}
    for key, version in world.last_put.items():
        assert world.cloud_got.get(key, [])[-1:] == [version], f"{key}: latest value {version} not delivered"
    assert len(world.outbox) == 0


@settings(max_examples=200, deadline=None)
@given(steps)
def test_duplicates_change_nothing(history: list[tuple[str, int]]) -> None:
    """Delivering every frame twice ends in exactly the same edge state as delivering it once."""
    once, twice = World(), World()
    run(once, history)
    doubled: list[tuple[str, int]] = []
    for op, arg in history:
        doubled.append((op, arg))
        if op == "to_edge":
            doubled.extend([("dup_c2e", 0), ("to_edge", 0)])
    run(twice, doubled)
    once.settle()
    twice.settle()
    assert once.edge_store == twice.edge_store


@given(st.text(max_size=12), st.one_of(st.none(), st.text(max_size=12)))
def test_rv_comparison_never_raises_and_is_irreflexive(a: str, b: str | None) -> None:
    newer = is_newer(a, b)
    assert isinstance(newer, bool)
    if b == a:
        assert not newer


@given(st.integers(0, 10**30), st.integers(0, 10**30))
def test_integer_rvs_compare_numerically(a: int, b: int) -> None:
    assert is_newer(str(a), str(b)) == (a > b)
