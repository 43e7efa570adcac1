"""Retention on a cluster's PostgreSQL: one node at a time cleans up, the events table is trimmed
from its start down to what a client can still resume from, and old cron fire records go while
each job's last fire stays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import pg_url

from jobd.app import Daemon
from jobd.config import parse_config
from jobd.models import DAY_MS, now_ms
from jobd.store.postgres import connect
from jobd.store.postgres.cluster import last_fires, record_fire, retention_lock
from jobd.store.postgres.events import append_event

HOUR_MS = 3_600_000


@pytest.fixture
async def daemon(tmp_path: Path, pg_db: str) -> AsyncIterator[Any]:
    made: list[Daemon] = []

    async def make(**sections: Any) -> Daemon:
        raw: dict[str, Any] = {"store": {"url": pg_url(pg_db)}, "cluster": {"node_name": "n1"}, "jobs": {}}
        raw.update(sections)
        d = Daemon(parse_config(raw, environ={}, base_dir=tmp_path))
        await d.store.open()
        made.append(d)
        return d

    yield make
    for d in made:
        await d.store.close()


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


async def add_events(dsn: str, count: int, age_ms: int) -> list[int]:
    """`count` events created `age_ms` ago, in one transaction each; their row ids."""
    async with await connect(dsn) as conn:
        ids = [await append_event(conn, "status_update", "{}", run_id=i) for i in range(count)]
        await conn.execute("UPDATE events SET created_at = created_at - %s WHERE id = ANY(%s)", (age_ms, ids))
    return ids


def feed(dsn: str) -> list[int]:
    """The row ids left in the events table, in feed order."""
    return [row[0] for row in rows(dsn, "SELECT id FROM events ORDER BY xid, id")]


async def test_events_are_trimmed_in_batches_from_the_start_of_the_feed(daemon, pg_db: str) -> None:
    d = await daemon(events={"ring_size": 30}, retention={"batch_size": 7})
    old = await add_events(pg_db, 100, age_ms=2 * HOUR_MS)
    result = await d.retention.sweep()
    assert result.events == 70 and not result.elsewhere
    assert feed(pg_db) == old[70:]  # the newest ring_size: what a client can still resume from
    again = await d.retention.sweep()
    assert again.events == 0


async def test_events_younger_than_an_hour_stay_whatever_their_number(daemon, pg_db: str) -> None:
    d = await daemon(events={"ring_size": 10}, retention={"batch_size": 8})
    old = await add_events(pg_db, 20, age_ms=2 * HOUR_MS)
    young = await add_events(pg_db, 30, age_ms=0)
    result = await d.retention.sweep()
    assert result.events == 20
    assert feed(pg_db) == young
    # What is left is the feed's unbroken tail: a resume from the first event left still works.
    assert old and rows(pg_db, "SELECT min(id) FROM events") == [(young[0],)]


async def test_old_fires_go_and_each_jobs_last_fire_stays(daemon, pg_db: str) -> None:
    d = await daemon(retention={"days": 2, "failed_days": 3, "batch_size": 4})
    now = now_ms()
    async with await connect(pg_db) as conn:
        for day in range(10, 0, -1):  # one fire a day for the last ten days, at noon
            await record_fire(conn, "daily", now - day * DAY_MS + DAY_MS // 2, "n1")
        await record_fire(conn, "daily", now, "n1")
        await record_fire(conn, "yearly", now - 300 * DAY_MS, "n2")  # its last fire: catch-up needs it
        for minute in range(1, 6):
            await record_fire(conn, "minutely", now - minute * 60_000, "n1")
    result = await d.retention.sweep()
    # Kept as long as the runs they made may be (the longer of days and failed_days: 3 days).
    assert result.fires == 7
    left = rows(pg_db, "SELECT job, scheduled_for FROM fires ORDER BY job, scheduled_for")
    assert [at for job, at in left if job == "daily"] == [now - day * DAY_MS + DAY_MS // 2 for day in (3, 2, 1)] + [now]
    assert [at for job, at in left if job == "yearly"] == [now - 300 * DAY_MS]
    assert len([job for job, _ in left if job == "minutely"]) == 5
    async with await connect(pg_db) as conn:
        assert await last_fires(conn) == {"daily": now, "yearly": now - 300 * DAY_MS, "minutely": now - 60_000}


async def test_fires_stay_while_runs_are_kept_for_ever(daemon, pg_db: str) -> None:
    d = await daemon(retention={"days": 0})
    async with await connect(pg_db) as conn:
        for day in range(400, 0, -100):
            await record_fire(conn, "daily", now_ms() - day * DAY_MS, "n1")
    assert (await d.retention.sweep()).fires == 0
    assert len(rows(pg_db, "SELECT 1 FROM fires")) == 4


async def test_one_node_at_a_time_cleans_up(daemon, pg_db: str) -> None:
    d = await daemon(events={"ring_size": 10})
    await add_events(pg_db, 25, age_ms=2 * HOUR_MS)
    async with await connect(pg_db) as other, retention_lock(other) as held:
        assert held  # another node is cleaning up
        result = await d.retention.sweep()
        assert result.elsewhere and result.events == 0
        assert len(feed(pg_db)) == 25
    result = await d.retention.sweep()
    assert not result.elsewhere and result.events == 15
    assert len(feed(pg_db)) == 10


async def test_an_open_transaction_holds_the_trim_back(daemon, pg_db: str) -> None:
    """Rows of a transaction still open are not settled: neither counted nor deleted."""
    d = await daemon(events={"ring_size": 10})
    old = await add_events(pg_db, 15, age_ms=2 * HOUR_MS)
    async with await connect(pg_db) as open_one:
        await open_one.execute("BEGIN")
        await append_event(open_one, "status_update", "{}")
        await open_one.execute("UPDATE events SET created_at = 0 WHERE xid = pg_current_xact_id()")
        later = await add_events(pg_db, 5, age_ms=2 * HOUR_MS)
        result = await d.retention.sweep()
        # The open transaction's xid is older than `later`'s: none of them is settled yet, so the
        # newest ten settled events are the last ten of `old`.
        assert result.events == 5
        assert feed(pg_db)[:10] == old[5:]
        assert set(later) <= set(feed(pg_db))
        await open_one.execute("ROLLBACK")
