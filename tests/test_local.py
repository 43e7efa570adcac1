"""The single-process run backend on a real SQLite store: creating, claiming, ending, fires,
pause, cancel, recovery after a crash; every change committed before it is published."""

from __future__ import annotations

import asyncio

import pytest
from backendhelp import local_backend

from jobd.errors import Conflict, OverlapConflict, Unavailable
from jobd.lifecycle import INTERRUPTED, Submission
from jobd.models import InvalidTransition, Run, RunStatus, TriggerSource, now_ms
from jobd.store import SQLiteStore

API = TriggerSource.API
NOOP = {"handler": "sample_jobs:noop"}


async def test_a_run_from_creation_to_its_end(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": NOOP}) as (backend, store, seen):
        [run] = await backend.create("j", [Submission({"x": 1})], triggered_by=API)
        assert (await store.get_run(run.id)).status is RunStatus.PENDING  # committed on return
        assert seen.of(run.id) == ["PENDING"] and backend.queued_count() == 1
        claimed, job = await backend.claim()
        assert claimed is run and job.name == "j" and run.status is RunStatus.PROCESSING
        assert run.started_at is not None and backend.is_running("j")
        await backend.finish(run, RunStatus.COMPLETED, result={"ok": True})
        backend.release(run)
        stored = await store.get_run(run.id)
        assert (stored.status, stored.result, stored.progress) == (RunStatus.COMPLETED, {"ok": True}, 100.0)
        assert seen.of(run.id) == ["PENDING", "PROCESSING", "COMPLETED"]
        assert run.id not in backend.active and backend.job_state("j").last_run_id == run.id
        assert backend.queue_snapshot(4)["counts"]["COMPLETED"] == 1
        with pytest.raises(InvalidTransition):  # a finished run never changes again
            backend.finish(run, RunStatus.FAILED)


async def test_a_failure_is_committed_with_its_retry(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "retries": 1, "retry_backoff_s": 3600}}) as (backend, store, _):
        [run] = await backend.create("j", [Submission()], triggered_by=API)
        await backend.claim()
        await backend.finish(run, RunStatus.FAILED, error="boom")
        [again] = backend.active_of("j")
        stored = await store.get_run(again.id)
        assert (stored.status, stored.retry_of, stored.attempt) == (RunStatus.PENDING, run.id, 2)
        # An hour's backoff, ±20 % jitter.
        assert 2_880_000 <= stored.run_after - stored.created_at <= 4_320_000
        assert backend.job_state("j").consecutive_failures == 1


@pytest.mark.parametrize("policy", ["skip", "buffer_one"])
async def test_the_overlap_policy_is_applied_at_creation(tmp_path, policy) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": policy}}) as (backend, _, _):
        [first] = await backend.create("j", [Submission()], triggered_by=API)
        with pytest.raises(OverlapConflict) as refused:
            await backend.create("j", [Submission()], triggered_by=API)
        assert refused.value.extra["active_run_ids"] == [first.id]


async def test_replace_cancels_what_is_active(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "replace"}}) as (backend, store, _):
        [first] = await backend.create("j", [Submission()], triggered_by=API)
        [second] = await backend.create("j", [Submission()], triggered_by=API)
        stored = await store.get_run(first.id)
        assert (stored.status, stored.error) == (RunStatus.CANCELLED, "replaced by a newer run of 'j'")
        assert [run.id for run in backend.active_of("j")] == [second.id]


async def test_one_key_one_run(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "allow"}}) as (backend, _, _):
        keyed = [Submission({"n": 1}, idempotency_key="k")]
        runs = await asyncio.gather(*(backend.create("j", keyed, triggered_by=API) for _ in range(5)))
        assert len({run.id for [run] in runs}) == 1
        [later] = await backend.create("j", keyed, triggered_by=API)
        assert later.id == runs[0][0].id


async def test_a_fire_is_recorded_with_its_run_or_its_skip(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "skip"}}) as (backend, store, seen):
        run = await backend.fire("j", 60_000, triggered_by=TriggerSource.CRON, now=60_001)
        assert run is not None and run.scheduled_for == 60_000
        assert (await store.job_states())["j"].last_fire_at == 60_000
        assert await backend.fire("j", 120_000, triggered_by=TriggerSource.CRON, now=120_005) is None
        state = (await store.job_states())["j"]
        assert (state.last_fire_at, state.skipped_fires, state.last_skipped_at) == (120_000, 1, 120_005)
        [skipped] = [e for e in seen.events if e.type == "fire_skipped"]
        assert skipped.data["active_run_ids"] == [run.id] and skipped.data["skipped_fires"] == 1


async def test_pause_is_committed(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": NOOP}) as (backend, store, _):
        await backend.set_paused("j", True)
        assert (await store.job_states())["j"].paused and backend.job_state("j").paused
        await backend.set_paused("j", False)
        assert not (await store.job_states())["j"].paused


async def test_cancel_a_waiting_run_and_ask_the_pool_to_stop_a_running_one(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "allow"}}) as (backend, store, _):
        stopped: list[int] = []
        backend.on_cancel(stopped.append)
        running, waiting = await backend.create("j", [Submission(), Submission()], triggered_by=API)
        await backend.claim()
        assert (await backend.cancel(waiting.id)).status is RunStatus.CANCELLED
        cancelling = asyncio.ensure_future(backend.cancel(running.id, reason="no longer needed"))
        await asyncio.sleep(0)
        assert stopped == [running.id] and backend.cancel_requested(running.id)
        backend.finish(running, RunStatus.CANCELLED, error=running.error)  # what the worker does
        assert (await cancelling).status is RunStatus.CANCELLED
        assert (await store.get_run(running.id)).error == "no longer needed"
        assert not backend.cancel_requested(running.id)
        with pytest.raises(Conflict):
            await backend.cancel(running.id)


async def test_no_new_runs_once_a_stop_began(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": NOOP}) as (backend, _, _):
        [done] = await backend.create("j", [Submission()], triggered_by=API)
        await backend.cancel(done.id)
        backend.accepting = False
        with pytest.raises(Unavailable):
            await backend.create("j", [Submission()], triggered_by=API)
        with pytest.raises(Unavailable):
            await backend.retry(done.id)


async def test_what_a_crash_left_is_recovered_at_open(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    rows = [
        Run(id=store.allocate_run_id(), job=job, status=status, triggered_by=API, created_at=now_ms())
        for job, status in [("j", RunStatus.PROCESSING), ("j", RunStatus.PENDING), ("gone", RunStatus.PENDING)]
    ]
    await store.write(rows)
    await store.close()
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "allow"}}) as (backend, store, _):
        processing, pending, orphan = [await store.get_run(run.id) for run in rows]
        assert (processing.status, processing.error) == (RunStatus.FAILED, INTERRUPTED)
        assert (orphan.status, orphan.error) == (RunStatus.FAILED, "job 'gone' is no longer configured")
        assert pending.status is RunStatus.PENDING
        [retry] = [run for run in backend.active.values() if run.retry_of == processing.id]
        claimed = set()
        for _ in range(2):
            run, _ = await backend.claim()
            claimed.add(run.id)
            backend.release(run)  # the job's one slot
        assert claimed == {pending.id, retry.id}


async def test_retention_deletes_through_the_backend_and_its_totals_follow(tmp_path) -> None:
    async with local_backend(tmp_path, {"j": {**NOOP, "overlap": "allow"}}) as (backend, store, _):
        runs = await backend.create("j", [Submission() for _ in range(3)], triggered_by=API)
        for run in runs:
            await backend.cancel(run.id)
        batch = await backend.delete_finished(cutoffs={RunStatus.CANCELLED: now_ms() + 1000}, limit=10)
        assert batch.deleted  # the newest run is always kept
        assert backend.queue_snapshot(1)["counts"]["CANCELLED"] == (await store.count_by_status())[RunStatus.CANCELLED]


async def test_a_reload_fails_the_waiting_runs_of_a_removed_job(tmp_path) -> None:
    jobs = {"j": {**NOOP, "retries": 1, "retry_backoff_s": 3600}, "k": NOOP}
    async with local_backend(tmp_path, jobs) as (backend, store, _):
        [run] = await backend.create("j", [Submission()], triggered_by=API)
        await backend.claim()
        await backend.finish(run, RunStatus.FAILED)
        [backing_off] = backend.active_of("j")
        backend.reconfigure({"k": backend.jobs["k"]})
        await backend.wait_finished(backing_off)
        assert (await store.get_run(backing_off.id)).error == "job 'j' is no longer configured"
