from __future__ import annotations

import asyncio

from mappers.sdk.outbox import Outbox


def twin(**values: str) -> dict[str, object]:
    return {"event_id": "e", "twin": {k: {"actual": {"value": v}} for k, v in values.items()}}


async def test_twin_reports_to_one_topic_merge_and_newer_values_win() -> None:
    box = Outbox()
    box.put("t/a", twin(temperature="1", humidity="40"))
    box.put("t/a", twin(temperature="2"))
    box.put("s/a", {"state": "online"})
    box.put("s/a", {"state": "offline"})
    assert len(box) == 2
    topic, payload = await box.get()
    assert topic == "t/a"
    assert payload["twin"] == {"temperature": {"actual": {"value": "2"}}, "humidity": {"actual": {"value": "40"}}}
    assert await box.get() == ("s/a", {"state": "offline"})


async def test_a_message_given_back_stays_older_than_what_came_since() -> None:
    box = Outbox()
    box.put("t/a", twin(temperature="1", humidity="40"))
    topic, payload = await box.get()
    box.put("t/a", twin(temperature="2"))
    box.give_back(topic, payload)
    _, merged = await box.get()
    assert merged["twin"] == {"temperature": {"actual": {"value": "2"}}, "humidity": {"actual": {"value": "40"}}}


async def test_get_waits_for_a_message() -> None:
    box = Outbox()
    waiter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    box.put("s/a", {"state": "online"})
    assert await waiter == ("s/a", {"state": "online"})


def test_the_outbox_is_bounded_by_topics_and_counts_what_it_evicts() -> None:
    box = Outbox(max_topics=2)
    for i in range(5):
        box.put(f"s/{i}", {"state": "online"})
    assert len(box) == 2
    assert box.dropped == 3


def test_discard_forgets_a_device() -> None:
    box = Outbox()
    box.put("$hw/events/device/ns/a/twin/update", twin(x="1"))
    box.put("$hw/events/device/ns/a/state/update", {"state": "online"})
    box.put("$hw/events/device/ns/ab/state/update", {"state": "online"})
    box.discard("$hw/events/device/ns/a/")
    assert len(box) == 1
