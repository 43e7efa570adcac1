"""PostgresStore answers as the SQLite store does: the same history in both, the same questions
(pages, cursors and totals, summaries, active runs, job state, idempotency keys, retention)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pgstores import Pair, open_pair
from rungen import generate_runs

from jobd.models import Counts, RunStatus, TriggerSource
from jobd.store import RunFilter
from jobd.store.base import IdempotencyKey, JobState
from jobd.store.migrations import DAY_MS
from jobd.store.postgres import open_pool
from jobd.store.postgres.store import PostgresStore

NOW = 1_790_000_000_000 + 13 * 3600 * 1000
JOBS = ("alpha", "beta", "gamma", "delta")


@pytest.fixture
async def pair(tmp_path: Path, pg_db: str) -> AsyncIterator[Pair]:
    async for both in open_pair(tmp_path, pg_db):
        yield both


async def history(pair: Pair, count: int = 1500, seed: int = 21) -> list:
    runs = generate_runs(count, now_ms=NOW, days=20, jobs=JOBS, seed=seed)
    # Some runs carry everything a run may hold, so the round trip covers every column.
    for run in runs[::97]:
        run.params = {"n": 3, "text": "é ✓", "nested": [1, None, {"a": True}]}
        run.result = {"rows": 12, "ok": [1.5, "x"]}
        run.error = "boom\nline two"
        run.message = "halfway"
        run.exit_code = 3
        run.log_tail = "last lines\n"
        run.scheduled_for = run.created_at - 10
        run.run_after = run.created_at + 5
        run.counts = Counts(total=None, success=2, failed=1, skipped=0)
    states = [
        JobState("alpha", paused=True, last_fire_at=NOW - 5, skipped_fires=2, last_skipped_at=NOW - 9),
        JobState("beta", consecutive_failures=4),
    ]
    keys = [IdempotencyKey(JOBS[i % 4], f"key-{i}", i + 1, NOW - i * 3_600_000) for i in range(40)]
    await pair.load(runs, states, keys)
    return runs


async def test_runs_read_back_the_same(pair: Pair) -> None:
    runs = await history(pair)
    for store in (pair.sqlite, pair.postgres):
        assert await store.get_run(runs[96].id) == runs[96]
        assert await store.get_run(10**9) is None
    ids = [*(run.id for run in reversed(runs[::3])), 10**9]
    assert await pair.postgres.get_runs(ids) == await pair.sqlite.get_runs(ids)
    assert len(await pair.postgres.get_runs(ids)) == len(runs[::3])
    assert await pair.postgres.get_runs([]) == []
    for job in (*JOBS, "none"):
        assert await pair.postgres.last_run(job) == await pair.sqlite.last_run(job)
    active = await pair.postgres.active_runs()
    assert active == await pair.sqlite.active_runs()
    assert [run.id for run in active] == [run.id for run in runs if not run.status.terminal]
    counts = await pair.postgres.count_by_status()
    assert counts == await pair.sqlite.count_by_status()
    assert counts == {s: sum(run.status is s for run in runs) for s in RunStatus}


FILTERS = (
    RunFilter(),
    RunFilter(job="alpha"),
    RunFilter(job="nobody"),
    RunFilter(status=(RunStatus.FAILED,)),
    RunFilter(status=(RunStatus.PENDING, RunStatus.PROCESSING)),
    RunFilter(status=(RunStatus.COMPLETED, RunStatus.PARTIAL), triggered_by=(TriggerSource.CRON, TriggerSource.API)),
    RunFilter(job="beta", triggered_by=(TriggerSource.RETRY,)),
    RunFilter(since=NOW - 5 * DAY_MS),
    RunFilter(until=NOW - 15 * DAY_MS),
    RunFilter(job="gamma", since=NOW - 10 * DAY_MS, until=NOW - 3 * DAY_MS, status=(RunStatus.COMPLETED,)),
    RunFilter(before_id=700),
    RunFilter(job="delta", before_id=1000, status=(RunStatus.FAILED, RunStatus.CANCELLED)),
    RunFilter(before_id=1),
)


@pytest.mark.parametrize("where", FILTERS, ids=str)
async def test_list_runs_and_summaries_are_the_same(pair: Pair, where: RunFilter) -> None:
    runs = await history(pair)
    for limit, offset in ((50, 0), (7, 13), (1, 0), (500, 400), (20, 5000)):
        page, total = await pair.postgres.list_runs(where, limit=limit, offset=offset)
        assert (page, total) == await pair.sqlite.list_runs(where, limit=limit, offset=offset), (limit, offset)
    # The total ignores the cursor: it counts every run matching the other fields.
    unpaged = dataclasses.replace(where, before_id=None)
    assert total == len(await pair.postgres.get_runs([run.id for run in runs if _matches(run, unpaged)]))
    summary = await pair.postgres.summarize_runs(where)
    assert summary == await pair.sqlite.summarize_runs(where)
    assert summary["runs"] == sum(_matches(run, where) for run in runs)


def _matches(run, f: RunFilter) -> bool:
    return (
        (f.job is None or run.job == f.job)
        and (not f.status or run.status in f.status)
        and (not f.triggered_by or run.triggered_by in f.triggered_by)
        and (f.since is None or run.created_at >= f.since)
        and (f.until is None or run.created_at < f.until)
        and (f.before_id is None or run.id < f.before_id)
    )


async def test_paging_with_the_cursor_walks_the_same_runs(pair: Pair) -> None:
    await history(pair, count=400)
    where = RunFilter(status=(RunStatus.COMPLETED, RunStatus.FAILED))
    pages = []
    for store in (pair.sqlite, pair.postgres):
        seen, cursor = [], None
        while True:
            page, total = await store.list_runs(dataclasses.replace(where, before_id=cursor), limit=30, offset=0)
            seen.append(([run.id for run in page], total))
            if len(page) < 30:
                break
            cursor = page[-1].id
        pages.append(seen)
    assert pages[0] == pages[1] and len(pages[1]) > 5


async def test_job_states_and_idempotency_keys_are_the_same(pair: Pair) -> None:
    await history(pair, count=50)
    states = await pair.postgres.job_states()
    assert states == await pair.sqlite.job_states()
    assert states["alpha"].paused and states["beta"].consecutive_failures == 4
    for job, key, since in itertools.product(("alpha", "beta"), ("key-0", "key-1", "key-4", "nope"), (0, NOW - 1)):
        found = await pair.postgres.find_idempotent(job, key, since)
        assert found == await pair.sqlite.find_idempotent(job, key, since), (job, key, since)
    assert await pair.postgres.find_idempotent("alpha", "key-4", 0) == 5
    assert await pair.postgres.find_idempotent("alpha", "key-4", NOW - 3_600_000) is None
    # Expired keys go in batches, oldest first in neither store's promise: compare what is left.
    for limit in (7, 7, 100):
        cutoff = NOW - 20 * 3_600_000
        went = await pair.postgres.delete_idempotency_keys(created_before=cutoff, limit=limit)
        assert went == await pair.sqlite.delete_idempotency_keys(created_before=cutoff, limit=limit)
    assert went == 19 - 14
    for i in range(40):
        job, key = JOBS[i % 4], f"key-{i}"
        assert await pair.postgres.find_idempotent(job, key, 0) == await pair.sqlite.find_idempotent(job, key, 0)
        assert (await pair.postgres.find_idempotent(job, key, 0) is None) == (i > 20)


async def test_retention_deletes_the_same_batches(pair: Pair) -> None:
    runs = await history(pair, count=1200, seed=5)
    # Each job's last run is kept, and so is the newest run of all.
    newest = runs[-1]
    newest.status, newest.started_at, newest.finished_at = RunStatus.COMPLETED, newest.created_at, newest.created_at + 1
    await pair.write([newest])
    last_ids = {run.job: run.id for run in runs if run.status is RunStatus.COMPLETED}
    states = [JobState(job, last_run_id=run_id) for job, run_id in last_ids.items()]
    await pair.sqlite.write(job_states=states)
    async with pair.postgres.pool.connection() as conn:
        for state in states:
            await conn.execute(
                "INSERT INTO job_state (job, last_run_id) VALUES (%s, %s) "
                "ON CONFLICT (job) DO UPDATE SET last_run_id = excluded.last_run_id",
                (state.job, state.last_run_id),
            )
    cutoffs = {RunStatus.COMPLETED: NOW + DAY_MS, RunStatus.FAILED: NOW - 8 * DAY_MS, RunStatus.CANCELLED: NOW}
    after_sqlite = after_postgres = None
    batches = 0
    deleted: set[int] = set()
    while True:
        mine = await pair.postgres.delete_runs(cutoffs=cutoffs, limit=97, after=after_postgres)
        theirs = await pair.sqlite.delete_runs(cutoffs=cutoffs, limit=97, after=after_sqlite)
        assert mine == theirs, batches
        deleted.update(run_id for run_id, _ in mine.deleted)
        batches += 1
        if mine.cursor is None:
            break
        after_sqlite, after_postgres = theirs.cursor, mine.cursor
    assert batches > 5 and len(deleted) > 500
    assert newest.id not in deleted and not deleted & set(last_ids.values())
    kept = [run.id for run in runs if run.id not in deleted]
    assert [run.id for run in await pair.postgres.get_runs(kept)] == kept
    assert await pair.postgres.count_by_status() == await pair.sqlite.count_by_status()
    assert await pair.postgres.delete_runs(cutoffs={}, limit=10) == await pair.sqlite.delete_runs(cutoffs={}, limit=10)


async def test_open_and_close_leave_a_pool_opened_elsewhere_alone(pg_db: str) -> None:
    pool = open_pool(pg_db, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        store = PostgresStore(pool)
        await store.open()
        assert await store.count_by_status() == dict.fromkeys(RunStatus, 0)
        await store.close()
        assert not pool.closed
    finally:
        await pool.close()
    mine = PostgresStore(open_pool(pg_db, min_size=1, max_size=2))
    await mine.open()
    assert await mine.last_run("any") is None
    await mine.close()
    assert mine.pool.closed
