"""`Runs`, the facade the API, the CLI and the scheduler use: fires, pause and resume kept in step
with the cron loop, next_run_at. A real backend and store, a real scheduler on a settable clock."""

from __future__ import annotations

from datetime import UTC, datetime

from backendhelp import local_backend
from fakeclock import FakeClock

from jobd.lifecycle import Runs
from jobd.models import TriggerSource
from jobd.scheduler import FireRequest, Scheduler

HOURLY = {"handler": "sample_jobs:noop", "schedule": "0 * * * *"}
START = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


async def test_a_fire_creates_its_run_with_the_scheduled_time(tmp_path) -> None:
    clock = FakeClock(START)
    async with local_backend(tmp_path, {"tick": HOURLY}) as (backend, store, _):
        runs = Runs(backend, scheduler_clock=clock.now)
        await runs.fire(FireRequest("tick", datetime(2026, 3, 1, 10, tzinfo=UTC), catchup=True))
        [run] = runs.active_of("tick")
        assert run.triggered_by is TriggerSource.CATCHUP
        assert run.scheduled_for == round(datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp() * 1000)
        assert (await store.job_states())["tick"].last_fire_at == run.scheduled_for


async def test_pause_and_resume_reach_the_scheduler_and_the_store(tmp_path) -> None:
    clock = FakeClock(START)
    async with local_backend(tmp_path, {"tick": HOURLY}) as (backend, store, _):
        runs = Runs(backend, scheduler_clock=clock.now)
        assert runs.next_run_at("tick") is None  # no cron loop running
        scheduler = Scheduler(backend.jobs, runs.fire, clock=clock)
        runs.use_scheduler(scheduler)
        assert runs.next_run_at("tick") == round(datetime(2026, 3, 1, 11, tzinfo=UTC).timestamp() * 1000)
        await runs.set_paused("tick", True)
        assert runs.next_run_at("tick") is None and scheduler.next_run_at("tick") is None
        assert (await store.job_states())["tick"].paused
        await runs.set_paused("tick", False)
        assert runs.next_run_at("tick") is not None and not (await store.job_states())["tick"].paused
