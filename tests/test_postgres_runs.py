"""Runs on PostgreSQL: creating, claiming (exactly once, FIFO, per-job limits, under real
concurrency between connections), the owner's writes checked against its claim token."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

from jobd.models import Run, RunStatus, TriggerSource, now_ms, status_update
from jobd.store.base import IdempotencyKey
from jobd.store.postgres import connect
from jobd.store.postgres.runs import (
    Conn,
    admit,
    cancel_requests,
    claim,
    find_idempotent,
    finish,
    finish_many,
    get_run,
    insert_runs,
    next_run_ids,
    request_cancel,
    update_run,
)


async def create(conn: Conn, jobs: list[str], *, run_after: int | None = None) -> list[int]:
    ids = await next_run_ids(conn, len(jobs))
    now = now_ms()
    runs = [
        Run(
            id=i, job=job, status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=now, run_after=run_after
        )
        for i, job in zip(ids, jobs)
    ]
    async with conn.transaction():
        await insert_runs(conn, runs)
    return ids


def ended(run: Run, status: RunStatus = RunStatus.COMPLETED) -> Run:
    run.status = status
    run.finished_at = run.updated_at = now_ms()
    return run


async def test_a_run_round_trips_with_its_columns(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        [rid] = await next_run_ids(conn)
        run = Run(
            id=rid,
            job="j",
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.CRON,
            created_at=1_700_000_000_123,
            params={"a": [1, "\x00é"]},
            scheduled_for=1_700_000_000_000,
            message="nul \x00 inside",
            retry_of=7,
        )
        await insert_runs(conn, [run])
        stored = await get_run(conn, rid)
        assert stored is not None
        assert stored.params == {"a": [1, "\x00é"]}
        assert stored.message == "nul \ufffd inside"
        assert (stored.scheduled_for, stored.created_at, stored.retry_of) == (1_700_000_000_000, 1_700_000_000_123, 7)
        assert stored.triggered_by is TriggerSource.CRON


async def test_claims_are_fifo_and_respect_run_after(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        later = await create(conn, ["a"], run_after=now_ms() + 60_000)
        ids = await create(conn, ["a", "b", "a"])
        claimed = await claim(conn, "n1", 10, {"a": 5, "b": 5})
        assert [c.run.id for c in claimed] == ids
        assert all(c.run.status is RunStatus.PROCESSING and c.node == "n1" for c in claimed)
        assert len({c.token for c in claimed}) == 3
        assert await claim(conn, "n1", 10, {"a": 5, "b": 5}) == []
        [late] = await claim(conn, "n1", 10, {"a": 5}, now_ms=now_ms() + 61_000)
        assert late.run.id == later[0]


async def test_a_node_claims_only_the_jobs_it_knows(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        [a, b] = await create(conn, ["a", "b"])
        assert [c.run.id for c in await claim(conn, "n1", 10, {"b": 1})] == [b]
        assert [c.run.id for c in await claim(conn, "n2", 10, {"a": 1})] == [a]
        await create(conn, ["a"])
        assert await claim(conn, "n3", 10, {}) == []


async def test_max_concurrency_counts_processing_runs(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        await create(conn, ["a"] * 5 + ["b"] * 2)
        first = await claim(conn, "n1", 10, {"a": 2, "b": 1})
        assert Counter(c.run.job for c in first) == {"a": 2, "b": 1}
        assert await claim(conn, "n1", 10, {"a": 2, "b": 1}) == []
        done = first[0]
        assert await finish(conn, ended(done.run), done.token)
        [next_a] = await claim(conn, "n1", 10, {"a": 2, "b": 1})
        assert next_a.run.job == "a"


async def test_concurrent_claimers_take_each_run_exactly_once(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        ids = await create(conn, [f"job{i % 7}" for i in range(2000)])
    caps = {f"job{i}": 10_000 for i in range(7)}
    taken: list[int] = []

    async def claimer(node: str) -> None:
        async with await connect(pg_db) as conn:
            while batch := await claim(conn, node, 32, caps):
                taken.extend(c.run.id for c in batch)

    await asyncio.gather(*(claimer(f"n{i}") for i in range(4)))
    assert sorted(taken) == ids


async def test_max_concurrency_holds_under_concurrent_claims(pg_db: str) -> None:
    """Six claimers on separate connections, each holding what it claimed for a moment before
    finishing it: at no moment are more runs of a job PROCESSING than its limit, and every run
    is claimed once."""
    caps = {"a": 3, "b": 1, "c": 2}
    async with await connect(pg_db) as conn:
        ids = await create(conn, [("a", "b", "c")[i % 3] for i in range(300)])
    taken: list[int] = []
    over: list[tuple[str, int]] = []

    async def check(probe: Conn) -> None:
        cur = await probe.execute("SELECT job, count(*) FROM runs WHERE status = 'PROCESSING' GROUP BY job")
        over.extend((job, n) for job, n in await cur.fetchall() if n > caps[job])

    async def claimer(node: str) -> None:
        async with await connect(pg_db) as conn, await connect(pg_db) as probe:
            idle = 0
            while idle < 20:
                batch = await claim(conn, node, 4, caps)
                if not batch:
                    idle += 1
                    await asyncio.sleep(0.001)
                    continue
                idle = 0
                taken.extend(c.run.id for c in batch)
                await check(probe)
                await asyncio.sleep(0.002)
                assert await finish_many(conn, [(ended(c.run), c.token) for c in batch]) == {c.run.id for c in batch}

    await asyncio.gather(*(claimer(f"n{i}") for i in range(6)))
    assert over == []
    assert sorted(taken) == ids


async def test_a_claim_waits_for_a_concurrent_claim_of_the_same_job(pg_db: str) -> None:
    """A claim that has not committed yet holds its jobs' locks: a second claimer counts the
    job's free slots only after it, even when the two see different runs as ready (a retry's
    run_after between their clocks), so the job never runs more than its limit."""
    t = now_ms()
    async with await connect(pg_db) as first, await connect(pg_db) as second:
        [retry] = await create(first, ["a"], run_after=t + 10_000)
        [fresh] = await create(first, ["a"])
        async with first.transaction():
            [took] = await claim(first, "n1", 5, {"a": 1}, now_ms=t + 20_000)
            assert took.run.id == retry
            other = asyncio.create_task(claim(second, "n2", 5, {"a": 1}, now_ms=t))
            done, _ = await asyncio.wait([other], timeout=0.3)
            assert not done, "the second claim went ahead while the first held the job"
        assert await other == []
        cur = await first.execute("SELECT id FROM runs WHERE status = 'PENDING'")
        assert await cur.fetchall() == [(fresh,)]


async def test_a_stale_claim_token_changes_nothing(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        await create(conn, ["a"])
        [owned] = await claim(conn, "n1", 1, {"a": 1})
        run = owned.run
        assert not await finish(conn, ended(run), uuid.uuid4())
        stored = await get_run(conn, run.id)
        assert stored is not None and stored.status is RunStatus.PROCESSING
        run.status, run.progress = RunStatus.PROCESSING, 0.5
        assert await finish(conn, run, owned.token)  # a progress report by the owner
        assert await finish(conn, ended(run, RunStatus.FAILED), owned.token)
        assert not await finish(conn, ended(run), owned.token)  # written once only
        stored = await get_run(conn, run.id)
        assert stored is not None and (stored.status, stored.progress) == (RunStatus.FAILED, 0.5)


async def test_update_run_applies_only_from_the_expected_status(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        [a, b] = await create(conn, ["a", "b"])
        pending = await get_run(conn, a)
        assert pending is not None
        assert await update_run(conn, ended(pending, RunStatus.CANCELLED), was=RunStatus.PENDING)
        [claimed] = await claim(conn, "n1", 5, {"a": 1, "b": 1})
        assert claimed.run.id == b
        assert not await update_run(conn, ended(claimed.run, RunStatus.CANCELLED), was=RunStatus.PENDING)


async def test_cancel_requests_reach_the_owning_node(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        [a, b] = await create(conn, ["a", "b"])
        await claim(conn, "n1", 1, {"a": 1})
        assert await request_cancel(conn, a) == "n1"
        assert await request_cancel(conn, b) is None  # still PENDING: cancelled directly instead
        assert await cancel_requests(conn, "n1") == [a]
        assert await cancel_requests(conn, "n2") == []


async def test_admission_serializes_a_job_across_connections(pg_db: str) -> None:
    """Two nodes admitting the same job with overlap=skip semantics: one run is created."""

    async def trigger(key: str) -> int | None:
        async with await connect(pg_db) as conn, conn.transaction():
            if (existing := await find_idempotent(conn, "a", key)) is not None:
                return existing
            counts = await admit(conn, "a")
            if counts.pending + counts.processing:
                return None
            await asyncio.sleep(0.05)  # hold the lock while the other node tries
            [rid] = await create_in(conn, "a")
            from jobd.store.postgres.runs import save_idempotent

            await save_idempotent(conn, IdempotencyKey("a", key, rid, now_ms()))
            return rid

    results = await asyncio.gather(trigger("k1"), trigger("k2"), trigger("k3"))
    assert sum(r is not None for r in results) == 1
    async with await connect(pg_db) as conn:
        cur = await conn.execute("SELECT count(*) FROM runs")
        assert await cur.fetchone() == (1,)


async def create_in(conn: Conn, job: str) -> list[int]:
    ids = await next_run_ids(conn, 1)
    await insert_runs(
        conn, [Run(id=ids[0], job=job, status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=now_ms())]
    )
    return ids


async def test_a_job_at_its_limit_does_not_hide_the_runs_behind_it(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        await create(conn, ["busy"] * 3)
        [running] = await claim(conn, "n1", 1, {"busy": 1})
        [other] = await create(conn, ["other"])
        [claimed] = await claim(conn, "n1", 1, {"busy": 1, "other": 1})
        assert claimed.run.id == other
        assert running.run.job == "busy"


async def test_a_claim_announces_each_run_as_models_status_update_would(pg_db: str) -> None:
    """The claim writes its events in SQL (jobd_status_update): the same message the node's
    Python would have written, for runs with and without the optional fields."""
    async with await connect(pg_db) as conn:
        ids = await next_run_ids(conn, 3)
        now = 1_765_000_000_007
        runs = [
            Run(ids[0], "announce", RunStatus.PENDING, TriggerSource.API, created_at=now),
            Run(
                ids[1],
                "announce",
                RunStatus.PENDING,
                TriggerSource.RETRY,
                created_at=now,
                attempt=2,
                max_attempts=3,
                message='a "quoted" é message',
                error="previous \\ error",
                result={"rows": [1, 2.5, None], "ok": True},
                progress=0.25,
            ),
            Run(ids[2], "announce", RunStatus.PENDING, TriggerSource.CRON, created_at=now),
        ]
        runs[1].counts.total, runs[1].counts.success, runs[1].counts.failed = 10, 7, 1
        async with conn.transaction():
            await insert_runs(conn, runs)
        claimed = await claim(conn, "n1", 10, {"announce": 10}, now_ms=now + 999)
        cur = await conn.execute("SELECT run_id, type, status, data FROM events WHERE job = 'announce' ORDER BY id", ())
        rows = await cur.fetchall()
    assert [c.run.id for c in claimed] == ids
    assert [(run_id, kind, status) for run_id, kind, status, _ in rows] == [
        (run_id, "status_update", "PROCESSING") for run_id in ids
    ]
    for c, (_, _, _, data) in zip(claimed, rows):
        assert json.loads(data) == status_update(c.run)
