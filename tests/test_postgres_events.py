"""The feed of committed changes: a reader never skips a transaction that committed late, sees
every event once, and finds its place again from an event id."""

from __future__ import annotations

import asyncio
import random

from jobd.store.postgres import connect
from jobd.store.postgres.events import (
    CHANNEL_WAKEUP,
    START,
    Event,
    Position,
    append_event,
    event_position,
    events_after,
    feed_end,
    notify_wakeup,
)
from jobd.store.postgres.runs import Conn

pytest_plugins = ("tests.postgres",)


async def read_all(conn: Conn, position: Position) -> tuple[list[Event], Position]:
    events: list[Event] = []
    while batch := await events_after(conn, position, limit=100):
        events.extend(batch)
        position = batch[-1].position
    return events, position


async def test_a_late_commit_is_read_after_not_skipped(pg_db: str) -> None:
    """The late transaction holds the smaller id; one that started later commits first."""
    async with await connect(pg_db) as late, await connect(pg_db) as early, await connect(pg_db) as reader:
        async with late.transaction():
            late_id = await append_event(late, "status_update", '{"n":1}', run_id=1, job="a", status="PENDING")
            early_id = await append_event(early, "status_update", '{"n":2}', run_id=2, job="a", status="PENDING")
            assert late_id < early_id
            assert await events_after(reader, START) == []  # the committed one waits behind the open one
        seen, _ = await read_all(reader, START)
        assert [e.id for e in seen] == [late_id, early_id]
        assert (seen[0].type, seen[0].data, seen[0].run_id, seen[0].job, seen[0].status) == (
            "status_update",
            '{"n":1}',
            1,
            "a",
            "PENDING",
        )


async def test_an_older_transaction_with_a_larger_id_is_not_skipped(pg_db: str) -> None:
    """Where a reader following ids would lose an event: the transaction that began first takes
    its event id last and commits first; the other, holding the smaller id, commits after."""
    async with await connect(pg_db) as older, await connect(pg_db) as newer, await connect(pg_db) as reader:
        await older.execute("BEGIN")
        await older.execute("SELECT pg_current_xact_id()")  # its transaction id is taken now
        async with newer.transaction():
            small = await append_event(newer, "t", "{}")
            large = await append_event(older, "t", "{}")
            await older.execute("COMMIT")
            first, position = await read_all(reader, START)
            assert [e.id for e in first] == [large]
        second, _ = await read_all(reader, position)
        assert [e.id for e in second] == [small]


async def test_a_reader_tailing_concurrent_writers_sees_every_event_once(pg_db: str) -> None:
    written: list[int] = []
    writers_done = asyncio.Event()

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        async with await connect(pg_db) as conn:
            for _ in range(60):
                async with conn.transaction():
                    ids = [await append_event(conn, "t", "{}") for _ in range(rng.randint(1, 3))]
                    await asyncio.sleep(rng.random() * 0.004)
                written.extend(ids)

    async def reader() -> list[int]:
        seen: list[int] = []
        position = START
        async with await connect(pg_db) as conn:
            while True:
                finished = writers_done.is_set()
                batch, position = await read_all(conn, position)
                seen.extend(e.id for e in batch)
                if finished:
                    return seen
                await asyncio.sleep(0.001)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(seed) for seed in range(4)))
    writers_done.set()
    seen = await reading
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(written)


async def test_a_reader_resumes_from_an_event_id(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        ids = [await append_event(conn, "t", f'{{"i":{i}}}') for i in range(5)]
        position = await event_position(conn, ids[2])
        assert position is not None
        rest, _ = await read_all(conn, position)
        assert [e.id for e in rest] == ids[3:]
        assert await event_position(conn, 10_000) is None
        end = await feed_end(conn)
        assert end[1] == ids[-1]
        assert await events_after(conn, end) == []


async def test_a_notification_carries_no_payload(pg_db: str) -> None:
    async with await connect(pg_db) as listener, await connect(pg_db) as sender:
        await listener.execute(f"LISTEN {CHANNEL_WAKEUP}")
        await notify_wakeup(sender)
        async with asyncio.timeout(5):
            async for note in listener.notifies():
                assert (note.channel, note.payload) == (CHANNEL_WAKEUP, "")
                break
