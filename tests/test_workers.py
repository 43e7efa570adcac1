"""The worker pool over a real backend and store: claiming in order, cancelling a run it
executes, and the staged stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from backendhelp import local_backend
from conftest import wait_for

from jobd.lifecycle import INTERRUPTED, LocalBackend, Submission
from jobd.models import RunStatus, TriggerSource
from jobd.store import SQLiteStore
from jobd.workers import WorkerPool

API = TriggerSource.API
SLEEPY = {"handler": "sample_jobs:sleepy", "overlap": "allow", "max_concurrency": 4}


@contextlib.asynccontextmanager
async def pool_of(
    tmp_path: Path, jobs: dict[str, Any], concurrency: int = 2
) -> AsyncIterator[tuple[WorkerPool, LocalBackend, SQLiteStore]]:
    async with local_backend(tmp_path, jobs) as (backend, store, _):
        pool = WorkerPool(
            backend,
            concurrency=concurrency,
            logs_dir=tmp_path / "logs",
            kill_grace_s=0.5,
            log_tail_bytes=1000,
            max_log_bytes=100_000,
            environ={"PATH": "/usr/bin:/bin"},
        )
        pool.start()
        try:
            yield pool, backend, store
        finally:
            await pool.stop(0)


async def test_workers_take_runs_in_order_and_end_them(tmp_path) -> None:
    jobs = {"record": {"handler": "sample_jobs:noop", "overlap": "allow", "max_concurrency": 10}}
    async with pool_of(tmp_path, jobs, concurrency=1) as (pool, backend, store):
        runs = await backend.create("record", [Submission({"i": i}) for i in range(5)], triggered_by=API)
        for run in runs:
            await backend.wait_finished(run)
        stored = [await store.get_run(run.id) for run in runs]
        assert [run.status for run in stored] == [RunStatus.COMPLETED] * 5
        assert [run.started_at for run in stored] == sorted(run.started_at for run in stored)
        assert [run.result for run in stored] == [{"echo": {"i": i}} for i in range(5)]


async def test_the_backend_asks_the_pool_to_stop_a_run(tmp_path) -> None:
    async with pool_of(tmp_path, {"slow": SLEEPY}) as (pool, backend, store):
        [run] = await backend.create("slow", [Submission({"seconds": 30})], triggered_by=API)
        await wait_for(lambda: pool.live_tail(run.id) or run.message == "started")
        assert pool.busy == 1
        await backend.cancel(run.id, reason="enough")
        stored = await store.get_run(run.id)
        assert (stored.status, stored.error) == (RunStatus.CANCELLED, "enough")
        await wait_for(lambda: pool.busy == 0)


async def test_a_stop_interrupts_what_outlasts_the_grace(tmp_path) -> None:
    async with pool_of(tmp_path, {"slow": SLEEPY}) as (pool, backend, store):
        quick, slow = await backend.create(
            "slow", [Submission({"seconds": 0.05}), Submission({"seconds": 30})], triggered_by=API
        )
        await wait_for(lambda: pool.busy == 2)
        assert await pool.stop(grace_s=1.0) == 1
        await backend.wait_settled()
        assert (await store.get_run(quick.id)).status is RunStatus.COMPLETED
        interrupted = await store.get_run(slow.id)
        assert (interrupted.status, interrupted.error) == (RunStatus.FAILED, INTERRUPTED)
        [retry] = backend.active_of("slow")  # on_interrupt = retry: it runs after the restart
        assert (retry.retry_of, retry.status) == (slow.id, RunStatus.PENDING)


async def test_hurry_cuts_the_grace_short(tmp_path) -> None:
    async with pool_of(tmp_path, {"slow": SLEEPY}) as (pool, backend, _):
        await backend.create("slow", [Submission({"seconds": 30})], triggered_by=API)
        await wait_for(lambda: pool.busy == 1)
        stopping = asyncio.ensure_future(pool.stop(grace_s=60))
        await asyncio.sleep(0.05)
        assert not stopping.done()
        pool.hurry()
        assert await asyncio.wait_for(stopping, 5) == 1
