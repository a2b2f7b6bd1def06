from __future__ import annotations

from common.protocol.reliable import ReliableReceiver, ReliableSender


def produce_key(key: str, seq: int) -> str:
    return f"{key}#{seq}"


def test_window_bounds_what_is_in_flight_and_acks_open_it() -> None:
    sender: ReliableSender[str, str] = ReliableSender(window=3)
    for key in "abcdef":
        sender.mark(key)
    first = sender.poll(0.0, produce_key)
    assert [f.seq for f in first] == [1, 2, 3]
    assert sender.poll(0.0, produce_key) == []
    done = sender.on_ack(2)
    assert [f.key for f in done] == ["a", "b"]
    assert [f.payload for f in sender.poll(0.0, produce_key)] == ["d#4", "e#5"]
    assert sender.inflight_count == 3


def test_cumulative_ack_is_idempotent() -> None:
    sender: ReliableSender[str, str] = ReliableSender(window=8)
    for key in "abc":
        sender.mark(key)
    sender.poll(0.0, produce_key)
    assert len(sender.on_ack(3)) == 3
    assert sender.on_ack(3) == []
    assert sender.on_ack(1) == []


def test_ten_thousand_marks_of_one_key_cost_two_messages() -> None:
    """One in flight per key; everything marked meanwhile collapses into one message after the ack."""
    sender: ReliableSender[str, int] = ReliableSender(window=64)
    versions = iter(range(1, 10_001))
    current = [0]

    def latest(key: str, seq: int) -> int:
        return current[0]

    for current[0] in versions:
        sender.mark("pod")
        sender.poll(0.0, latest)
    sent = sender.on_ack(1)
    assert [f.payload for f in sent] == [1]
    again = sender.poll(0.0, latest)
    assert [(f.seq, f.payload) for f in again] == [(2, 10_000)]


def test_retransmit_after_the_deadline_with_backoff() -> None:
    sender: ReliableSender[str, str] = ReliableSender(window=4, retransmit_after=1.0, retransmit_max=3.0)
    sender.mark("a")
    sender.poll(0.0, produce_key)
    assert sender.next_deadline() == 1.0
    assert sender.poll(0.9, produce_key) == []
    again = sender.poll(1.0, produce_key)
    assert [(f.seq, f.payload, f.attempts) for f in again] == [(1, "a#1", 2)]
    assert sender.next_deadline() == 3.0  # 1.0 + 2 s
    sender.poll(3.0, produce_key)
    assert sender.next_deadline() == 6.0  # capped at 3 s
    assert sender.retransmits == 2


def test_nothing_to_send_uses_no_sequence_number() -> None:
    sender: ReliableSender[str, str] = ReliableSender(window=4)
    sender.mark("gone")
    sender.mark("here")
    flights = sender.poll(0.0, lambda key, seq: None if key == "gone" else f"{key}#{seq}")
    assert [(f.seq, f.payload) for f in flights] == [(1, "here#1")]


def test_receiver_tells_duplicates_and_acks_only_contiguous_commits() -> None:
    receiver = ReliableReceiver()
    assert receiver.accept(1)
    assert not receiver.accept(1)  # still being applied: a duplicate
    receiver.committed(1)
    assert not receiver.accept(1)
    assert receiver.accept(3)  # 2 was lost
    receiver.committed(3)
    assert receiver.ack == 1
    assert receiver.accept(2)
    receiver.committed(2)
    assert receiver.ack == 3
    assert receiver.ack_due()
    assert receiver.ack_sent() == 3
    assert not receiver.ack_due()
    assert not receiver.accept(3)
