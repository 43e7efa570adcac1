"""Last-Event-ID across the nodes of a cluster: the events table tailed into each node's bus, on
real PostgreSQL. Every node delivers the same events in the same order (the feed order), the SSE
id names a place in that order, and a client resuming from it on any node, from the node's ring or
from the table, gets every later event once, including one whose row id is smaller than its own."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from conftest import wait_for

from jobd.cluster.eventfeed import EventTail, decode
from jobd.cluster.wakeup import Signal
from jobd.events import Event, EventBus
from jobd.store.postgres import connect, open_pool
from jobd.store.postgres.events import KEY_BASE, append_event, key_of, trim_events


class Node:
    """One node's half of the feed: its tail and its bus, as a cluster node wires them."""

    def __init__(self, dsn: str, ring_size: int = 1000) -> None:
        self.pool = open_pool(dsn, min_size=1, max_size=2)
        self.signal = Signal(random.Random(0))
        self.bus = EventBus(ring_size=ring_size, shared_ids=True)
        self.tail = EventTail(self.pool.connection, self.signal, self.deliver)

    def deliver(self, batch: list) -> None:  # type: ignore[type-arg]
        for row in batch:
            self.bus.publish(row.type, decode(row), run_id=row.run_id, event_id=row.key)

    def published(self) -> list[int]:
        """The row ids this node published, in its order."""
        return ids(self.bus.since(self.tail.started) or [])


@contextlib.asynccontextmanager
async def node(dsn: str, ring_size: int = 1000) -> AsyncIterator[Node]:
    n = Node(dsn, ring_size)
    await n.pool.open(wait=True)
    await n.tail.start_at_end()
    try:
        yield n
    finally:
        await n.tail.stop()
        await n.pool.close()


async def out_of_order(dsn: str) -> tuple[int, int]:
    """Two events whose feed order is not their id order: the transaction that began first takes
    the larger id, and the other, with the smaller id, commits first. Returns (larger, smaller)."""
    async with await connect(dsn) as older, await connect(dsn) as newer:
        await older.execute("BEGIN")
        await older.execute("SELECT pg_current_xact_id()")  # its place in the feed is taken now
        async with newer.transaction():
            smaller = await append_event(newer, "status_update", "{}", run_id=2)
            larger = await append_event(older, "status_update", "{}", run_id=1)
        await older.execute("COMMIT")
    return larger, smaller


def ids(events: list[Event] | None) -> list[int]:
    """The row ids of these events (their SSE ids are feed keys)."""
    assert events is not None
    return [event.id % KEY_BASE for event in events]


async def test_a_resume_after_an_event_delivered_out_of_id_order_misses_nothing(pg_db: str) -> None:
    async with node(pg_db) as a, node(pg_db) as c:
        async with await connect(pg_db) as conn:
            before = await append_event(conn, "status_update", "{}", run_id=0)
        larger, smaller = await out_of_order(pg_db)
        async with await connect(pg_db) as conn:
            after = await append_event(conn, "status_update", "{}", run_id=3)
        a.signal.set()
        c.signal.set()
        await wait_for(lambda: len(a.published()) == 4 and len(c.published()) == 4)
        # The feed order, the same on both nodes: the larger id comes before the smaller one.
        assert a.published() == c.published() == [before, larger, smaller, after]
        assert [e.id for e in a.bus.since(a.tail.started) or []] == sorted(e.id for e in a.bus.since(0) or [])
        # A client on A has seen `larger` (not `smaller` yet) and goes to C with its id.
        seen = next(e for e in a.bus.since(a.tail.started) or [] if e.id % KEY_BASE == larger)
        assert seen.id >= KEY_BASE
        assert ids(c.bus.since(seen.id)) == [smaller, after]  # C's ring
        resumed = await c.tail.resume(seen.id, limit=100)  # the events table
        assert resumed is not None and resumed[0] == seen.id
        assert ids(resumed[1]) == [smaller, after]
        assert [e.frame for e in resumed[1]] == [e.frame for e in c.bus.since(seen.id) or []]
        # An id from before the upgrade was the row id: it resumes from the same place.
        legacy = await c.tail.resume(larger, limit=100)
        assert legacy is not None and legacy[0] == seen.id and ids(legacy[1]) == [smaller, after]


async def test_a_node_behind_the_client_drops_what_the_client_already_has(pg_db: str) -> None:
    """The client saw events on a node ahead; the node it reconnects to publishes them later."""
    async with node(pg_db) as a, node(pg_db) as c:
        await c.tail.stop()  # C falls behind
        async with await connect(pg_db) as conn:
            first = [await append_event(conn, "status_update", "{}", run_id=i) for i in range(3)]
        a.signal.set()
        await wait_for(lambda: len(a.published()) == 3)
        last_seen = a.bus.last_id
        assert c.bus.since(last_seen) is None  # not in C's ring: it is ahead of C
        resumed = await c.tail.resume(last_seen, limit=100)
        assert resumed == (last_seen, [])  # nothing after it yet, and it is a real event
        sub = c.bus.subscribe()
        sub.resume_after(last_seen)
        async with await connect(pg_db) as conn:
            later = [await append_event(conn, "status_update", "{}", run_id=i) for i in range(2)]
        c.tail._task = asyncio.create_task(c.tail._run())  # C catches up
        c.signal.set()
        await wait_for(lambda: len(c.published()) == 5)
        got = []
        while (event := sub.get_nowait()) is not None:
            got.append(event.id % KEY_BASE)
        assert got == later
        assert c.published() == first + later


async def test_an_id_retention_took_or_too_far_behind_cannot_be_resumed(pg_db: str) -> None:
    async with node(pg_db) as a:
        async with await connect(pg_db) as conn:
            rows = [await append_event(conn, "status_update", "{}", run_id=i) for i in range(6)]
        a.signal.set()
        await wait_for(lambda: len(a.published()) == 6)
        keys = [e.id for e in a.bus.since(a.tail.started) or []]
        assert await a.tail.resume(keys[1], limit=3) is None  # four follow it
        assert await a.tail.resume(keys[2], limit=3) is not None
        async with await connect(pg_db) as conn:
            xid, _ = divmod(keys[2], KEY_BASE)
            assert await trim_events(conn, through=(xid, rows[2]), created_before=2**62, limit=100) == 3
        assert await a.tail.resume(keys[2], limit=100) is None
        resumed = await a.tail.resume(keys[3], limit=100)
        assert resumed is not None and ids(resumed[1]) == rows[4:]
        assert await a.tail.resume(key_of((xid, 10**9)), limit=100) is None  # no such event
        assert await a.tail.resume(0, limit=100) is None
