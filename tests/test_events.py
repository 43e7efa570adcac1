"""The event bus on its own: ids, the replay ring, bounded subscribers, pokes and listeners."""

from __future__ import annotations

import asyncio

import pytest

from jobd.events import EventBus, SubscriberOverflow, SubscriptionClosed


def test_ids_increase_and_frames_are_encoded_once():
    bus = EventBus(first_id=100)
    first = bus.publish("status_update", {"run_id": 1}, run_id=1)
    second = bus.publish("status_update", {"run_id": 1}, run_id=1)
    assert (first.id, second.id, bus.last_id) == (100, 101, 101)
    assert first.frame == b'id: 100\ndata: {"type":"status_update","run_id":1}\n\n'


def test_since_replays_from_the_ring_and_says_when_it_cannot():
    bus = EventBus(ring_size=3, first_id=1)
    events = [bus.publish("status_update", {"n": n}, run_id=1) for n in range(5)]
    assert [e.id for e in bus.since(3)] == [4, 5]
    assert bus.since(5) == []
    assert bus.since(1) is None  # 2 has left the ring
    assert bus.since(99) is None  # from the future: another process
    summary = bus.publish("summary", {}, replayable=False)
    assert [e.id for e in bus.since(events[-1].id)] == []
    assert summary.id == 6 and bus.since(6) == []


async def test_progress_is_coalesced_and_a_full_subscriber_is_cut_off():
    bus = EventBus(subscriber_buffer=2, first_id=1)
    sub = bus.subscribe(run_id=1)
    for pct in range(10):
        bus.publish("status_update", {"progress": pct}, run_id=1, coalescible=True)
    assert sub.pending() == 1
    assert (await sub.get()).data["progress"] == 9
    for n in range(3):
        bus.publish("log", {"n": n}, run_id=1)  # not wanted: no logs asked for
    assert sub.pending() == 0
    for n in range(3):
        bus.publish("status_update", {"n": n}, run_id=1)
    assert sub.closed and bus.dropped == 1 and bus.subscriber_count == 0
    with pytest.raises(SubscriberOverflow):
        await sub.get()


async def test_poke_wakes_a_waiting_get_without_an_event():
    bus = EventBus()
    sub = bus.subscribe()
    waiting = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.poke()
    assert await waiting is None
    bus.publish("status_update", {}, run_id=3)
    sub.poke()
    assert (await sub.get()) is not None  # an event first, then the poke
    assert await sub.get() is None


async def test_close_all_hands_out_what_is_queued_then_ends():
    bus = EventBus()
    sub = bus.subscribe(run_id=1)
    bus.publish("status_update", {"x": 1}, run_id=1)
    bus.close_all()
    assert (await sub.get()).data["x"] == 1
    with pytest.raises(SubscriptionClosed):
        await sub.get()
    assert bus.subscribe(run_id=1).closed


def test_listeners_see_every_event():
    bus = EventBus()
    seen = []
    bus.listeners.append(seen.append)
    bus.publish("status_update", {}, run_id=1)
    bus.publish("summary", {}, replayable=False)
    assert [e.type for e in seen] == ["status_update", "summary"]
