"""`Runs`: what the API, the CLI and the scheduler ask of the run lifecycle, in one place.

It turns their requests into calls on the backend and keeps the scheduler in step with pause and
resume; it holds no run state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from jobd.config import JobConfig
from jobd.lifecycle.backend import RunBackend, Submission
from jobd.models import Run, TriggerSource
from jobd.store import JobState, RunFilter


class Fire(Protocol):
    """A cron fire the scheduler asks for (jobd.scheduler.FireRequest)."""

    @property
    def job(self) -> str: ...

    @property
    def scheduled_for(self) -> datetime: ...

    @property
    def catchup(self) -> bool: ...

    @property
    def overlap(self) -> str | None: ...

    @property
    def excluded_by(self) -> str | None: ...


class Schedule(Protocol):
    """The cron loop, as pause/resume and next_run_at see it (jobd.scheduler.Scheduler)."""

    def pause(self, job: str) -> None: ...

    def resume(self, job: str) -> None: ...

    def next_run_at(self, job: str) -> datetime | None: ...


class Runs:
    def __init__(self, backend: RunBackend, *, scheduler_clock: Callable[[], datetime]) -> None:
        self.backend = backend
        self._scheduler_now = scheduler_clock
        self._scheduler: Schedule | None = None

    def use_scheduler(self, scheduler: Schedule | None) -> None:
        """The cron loop that pause/resume and next_run_at speak to (None while it is not running)."""
        self._scheduler = scheduler

    # -- the clock, jobs and their state -----------------------------------------------------------

    @property
    def clock(self) -> Callable[[], int]:
        return self.backend.clock

    @clock.setter
    def clock(self, clock: Callable[[], int]) -> None:
        self.backend.clock = clock

    @property
    def accepting(self) -> bool:
        return self.backend.accepting

    @property
    def jobs(self) -> dict[str, JobConfig]:
        return self.backend.jobs

    def job(self, name: str) -> JobConfig:
        return self.backend.job(name)

    def job_state(self, name: str) -> JobState:
        return self.backend.job_state(name)

    @property
    def job_states(self) -> Mapping[str, JobState]:
        return self.backend.job_states

    # -- creating ----------------------------------------------------------------------------------

    async def submit(
        self,
        job: str,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str | None = None,
        scheduled_for: int | None = None,
    ) -> list[Run]:
        """Create runs, commit them, then queue them. Returns once they are durable."""
        return await self.backend.create(
            job, submissions, triggered_by=triggered_by, overlap=overlap, scheduled_for=scheduled_for
        )

    async def fire(self, request: Fire) -> None:
        """The scheduler's callback: a cron fire, or its skip, recorded."""
        if request.excluded_by is not None:
            await self.backend.exclude_fire(
                request.job,
                _epoch_ms(request.scheduled_for),
                now=_epoch_ms(self._scheduler_now()),
                excluded_by=request.excluded_by,
            )
            return
        await self.backend.fire(
            request.job,
            _epoch_ms(request.scheduled_for),
            triggered_by=TriggerSource.CATCHUP if request.catchup else TriggerSource.CRON,
            # The scheduler's clock, like scheduled_for, so the two can be compared.
            now=_epoch_ms(self._scheduler_now()),
            overlap=request.overlap,
        )

    async def backfill(self, job: str, times: Sequence[datetime]) -> tuple[list[Run], list[int]]:
        """Runs for past fire times: the runs made and the times (epoch ms) that already had one."""
        return await self.backend.backfill(job, [_epoch_ms(at) for at in times])

    async def retry(self, run_id: int) -> Run:
        return await self.backend.retry(run_id)

    # -- operator actions --------------------------------------------------------------------------

    async def cancel(self, run_id: int, *, reason: str = "cancelled", wait: bool = True) -> Run:
        return await self.backend.cancel(run_id, reason=reason, wait=wait)

    async def set_paused(self, job: str, paused: bool) -> None:
        # Paused before the commit, so that no fire slips in while it is being written; resumed
        # only once it is stored.
        if paused and self._scheduler is not None:
            self._scheduler.pause(job)
        await self.backend.set_paused(job, paused)
        if not paused and self._scheduler is not None:
            self._scheduler.resume(job)

    def next_run_at(self, job: str) -> int | None:
        if self._scheduler is None or self.backend.job_state(job).paused:
            return None
        at = self._scheduler.next_run_at(job)
        return None if at is None else _epoch_ms(at)

    async def wait_finished(self, run: Run) -> None:
        await self.backend.wait_finished(run)

    # -- reading -----------------------------------------------------------------------------------

    @property
    def active(self) -> Mapping[int, Run]:
        return self.backend.active

    def active_of(self, job: str) -> list[Run]:
        return self.backend.active_of(job)

    def is_running(self, job: str) -> bool:
        return self.backend.is_running(job)

    async def get(self, run_id: int) -> Run:
        return await self.backend.get(run_id)

    async def list(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        return await self.backend.list(where, limit=limit, offset=offset)

    async def last_runs_of(self, names: Iterable[str]) -> dict[str, Run]:
        return await self.backend.last_runs_of(names)

    def queued_count(self) -> int:
        return self.backend.queued_count()

    def queue_snapshot(self, workers_total: int) -> dict[str, Any]:
        return self.backend.queue_snapshot(workers_total)


def _epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)
