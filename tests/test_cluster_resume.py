"""Last-Event-ID across the nodes of a cluster: the events table tailed into each node's bus, on
real PostgreSQL. Every node delivers the same events in the same order (the feed order), the SSE
id names a place in that order, and a client resuming from it on any node, from the node's ring or
from the table, gets every later event once, including one whose row id is smaller than its own."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from clusterhelp import executions, node_config, nodes, trigger
from conftest import wait_for
from process import DaemonProcess
from ssehelp import NO_TIMEOUT, NOOP, Message, SSEReader, serve  # noqa: F401  (serve is a fixture)

from jobd.cluster import eventfeed
from jobd.cluster.eventfeed import EventTail, decode
from jobd.cluster.wakeup import Signal
from jobd.events import Event, EventBus
from jobd.store.postgres import connect, open_pool
from jobd.store.postgres.events import KEY_BASE, append_event, events_following, key_of, position_of, trim_events


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
        async with await connect(pg_db) as conn:
            # A tail that had read up to a row retention took knows that it may have missed some.
            following, unbroken = await events_following(conn, position_of(keys[2]))
            assert not unbroken and [e.id for e in following] == rows[3:]
            following, unbroken = await events_following(conn, position_of(keys[3]))
            assert unbroken and [e.id for e in following] == rows[4:]
        resumed = await a.tail.resume(keys[3], limit=100)
        assert resumed is not None and ids(resumed[1]) == rows[4:]
        assert await a.tail.resume(key_of((xid, 10**9)), limit=100) is None  # no such event
        assert await a.tail.resume(0, limit=100) is None


# -- real nodes ---------------------------------------------------------------------------------

TERMINAL = ("COMPLETED", "PARTIAL", "FAILED", "CANCELLED")


def ended(messages: list[Message]) -> list[int]:
    """The runs whose terminal status_update these messages hold, in order, repeats included."""
    return [m.data["run_id"] for m in messages if m.type == "status_update" and m.data["status"] in TERMINAL]


async def read(reader: SSEReader, until: Any, timeout: float = 60) -> None:
    """Read messages into reader.messages until `until()` holds."""
    async with asyncio.timeout(timeout):
        while not until():
            assert await reader.next(timeout) is not None, "the stream ended"


def out_of_id_order(messages: list[Message]) -> int | None:
    """The index of a message followed later by a run's end with a smaller row id (a feed key
    ends with the row id), or None: where a resume by row id would lose that end."""
    rows = [None if m.id is None else m.id % KEY_BASE for m in messages]
    for j, m in enumerate(messages):
        if m.type == "status_update" and m.data["status"] in TERMINAL and rows[j] is not None:
            for i in range(max(0, j - 50), j):
                row = rows[i]
                if row is not None and row > rows[j] and messages[i].type == "status_update":  # type: ignore[operator]
                    return i
    return None


def fed_ids_increase(messages: list[Message]) -> bool:
    """Ids never go down in a stream (the messages a stream makes itself may repeat one)."""
    ids = [m.id for m in messages if m.id is not None]
    return ids == sorted(ids)


async def resume_on(session: aiohttp.ClientSession, url: str, last_id: int, sentinel: int) -> list[Message]:
    """The messages of a firehose on `url` resumed from `last_id`, up to the end of run
    `sentinel`, which was created after every other run had ended: its end comes after theirs in
    the feed, so a resumed stream that reaches it has had every end it is going to have."""
    async with session.get(
        f"{url}/api/v1/events", headers={"Last-Event-ID": str(last_id)}, timeout=NO_TIMEOUT
    ) as response:
        assert response.status == 200
        reader = SSEReader(response)
        await read(reader, lambda: sentinel in ended(reader.messages), timeout=30)
        return reader.messages


def all_ended(dsn: str, ids: list[int]) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM runs WHERE id = ANY(%s) AND status = ANY(%s)", (ids, list(TERMINAL))
        ).fetchone()
    return row is not None and row[0] == len(ids)


async def test_a_client_resumes_on_another_node_with_no_gap_and_no_duplicate(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        a, b, c = daemons
        created: list[int] = []
        enough_seen = asyncio.Event()

        async def load() -> None:
            # Batches on B and C, from several clients at once, so that transactions of different
            # nodes commit out of their id order, until the client has left A and a bit more.
            rounds = 0
            while rounds < 20 or not enough_seen.is_set():
                batches = [trigger(session, node.url, "noop", 10) for node in (b, c, b, c)]
                for ids in await asyncio.gather(*batches):
                    created.extend(ids)
                rounds += 1

        loading = asyncio.create_task(load())
        async with session.get(f"{a.url}/api/v1/events", timeout=NO_TIMEOUT) as response:
            assert response.status == 200
            first = SSEReader(response)
            await read(first, lambda: len(ended(first.messages)) >= 150 and out_of_id_order(first.messages) is not None)
        enough_seen.set()
        # The client stops right after an event that came before one with a smaller row id.
        cut = out_of_id_order(first.messages)
        assert cut is not None
        seen = first.messages[: cut + 1]
        last_id = seen[-1].id
        assert last_id is not None
        await loading
        await wait_for(lambda: all_ended(pg_db, created), timeout=30)
        [sentinel] = await trigger(session, b.url, "noop", 1)
        wanted = {*created, sentinel}
        before = ended(seen)
        second = await resume_on(session, c.url, last_id, sentinel)
        assert second[0].type == "connected" and second[0].id == last_id  # resumed, not reset
        after = ended(second)
        counted = collections.Counter(before + after)
        assert sorted(wanted - set(counted)) == [], "missed"
        assert [run for run, n in counted.items() if n > 1] == [], "duplicates"
        assert fed_ids_increase(first.messages) and fed_ids_increase(second)
        assert a.proc is not None
        assert any(pid != a.proc.pid for _, pid in executions(tmp_path)), "runs executed on B or C"

        # A node started after the client left has none of that in its ring: the events table.
        d = DaemonProcess(node_config(tmp_path, pg_db, "node3"), env=a.env)
        try:
            await d.start()
            third = await resume_on(session, d.url, last_id, sentinel)
        finally:
            await d.cleanup()
        assert third[0].type == "connected" and third[0].id == last_id
        counted = collections.Counter(before + ended(third))
        assert sorted(wanted - set(counted)) == [] and max(counted.values()) == 1


# -- two nodes in one process ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_node_started_later_resumes_from_the_table_or_says_it_cannot(serve, pg_db: str) -> None:
    jobs = {"noop": {**NOOP, "overlap": "allow"}}
    a = await serve(jobs, cluster={"node_name": "a"})
    response, stream = await a.open("/api/v1/events")
    runs = [(await a.trigger("noop"))["id"] for _ in range(3)]
    await read(stream, lambda: set(runs) <= set(ended(stream.messages)))
    response.close()
    ends = {
        m.data["run_id"]: m.id for m in stream.messages if m.type == "status_update" and m.data["status"] in TERMINAL
    }
    first, last = min(runs), max(runs)
    key = ends[first]
    assert key is not None and key >= KEY_BASE

    b = await serve(jobs, cluster={"node_name": "b"})  # its ring holds none of it

    async def resume(path: str, last_id: int) -> tuple[int, list[Message]]:
        response, reader = await b.open(path, {"Last-Event-ID": str(last_id)})
        if response.status == 204:
            return 204, []
        if path.endswith("/events") and "runs" not in path:
            await read(reader, lambda: any(m.type == "summary" for m in reader.messages))
            response.close()
            return response.status, reader.messages
        return response.status, await reader.rest()

    after_first = sorted(r for r in runs if ends[r] > key)  # type: ignore[operator]
    for last_id in (key, key % KEY_BASE):  # a feed key, and the row id an earlier jobd sent
        status, messages = await resume("/api/v1/events", last_id)
        assert status == 200 and messages[0].type == "connected" and messages[0].id == key
        assert sorted(ended(messages)) == after_first
    # A run's stream: the rest of a run that ended, or 204 once the client has its end.
    status, messages = await resume(f"/api/v1/runs/{last}/events", key)
    assert status == 200 and ended(messages) == ([last] if ends[last] > key else [])  # type: ignore[operator]
    assert (await resume(f"/api/v1/runs/{first}/events", key))[0] == 204

    async with await connect(pg_db) as conn:  # retention takes the client's place
        await trim_events(conn, through=position_of(key), created_before=2**62, limit=100)
    status, messages = await resume("/api/v1/events", key)
    assert status == 200 and messages[0].id == 0  # a fresh start: connected, the active runs, a summary
    assert ended(messages) == []


async def test_an_event_held_back_by_a_transaction_that_sends_no_notify_is_read_soon(
    pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat's transaction writes no event: when it is what held an event back, nothing
    wakes the tail when it ends. The tail looks again by itself (here, with the wake-ups and
    the poll pushed out to a minute, only that can deliver the event in time)."""
    monkeypatch.setattr(eventfeed, "FAST_POLL_S", 60.0)
    async with node(pg_db) as n, await connect(pg_db) as holder, await connect(pg_db) as writer:
        n.signal.set()  # the tail's first pass
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_current_xact_id()")  # an older transaction, still open
        event_id = await append_event(writer, "status_update", "{}", run_id=7)
        n.signal.set()  # the event's NOTIFY: the tail looks, and finds it held back
        await asyncio.sleep(0.05)  # the scenario: the holder stays open a moment
        assert event_id not in n.published()
        await holder.execute("COMMIT")  # ends without a NOTIFY
        await wait_for(lambda: event_id in n.published(), timeout=10)
