"""What PostgresBackend answers from its table of active runs and from the store."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jobd.cluster import runtable
from jobd.config import JobConfig
from jobd.errors import RunNotFound
from jobd.lifecycle.views import queue_snapshot
from jobd.models import Run, RunStatus
from jobd.store.base import JobState, RunFilter
from jobd.store.postgres.store import PostgresStore


class Reads:
    """The reading half of PostgresBackend (which sets these attributes up)."""

    _jobs: dict[str, JobConfig]
    _states: dict[str, JobState]
    table: runtable.RunTable
    store: PostgresStore
    clock: Callable[[], int]

    # -- reading -----------------------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobConfig]:
        return self._jobs

    @property
    def active(self) -> Mapping[int, Run]:
        return self.table.runs

    def active_of(self, job: str) -> list[Run]:
        return [run for run in self.table.runs.values() if run.job == job]

    def is_running(self, job: str) -> bool:
        return any(r.job == job and r.status is RunStatus.PROCESSING for r in self.table.runs.values())

    def job_state(self, job: str) -> JobState:
        state = self._states.get(job)
        if state is None:
            state = self._states[job] = JobState(job)
        return state

    @property
    def job_states(self) -> Mapping[str, JobState]:
        return self._states

    async def get(self, run_id: int) -> Run:
        run = self.table.runs.get(run_id)
        if run is None:
            run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        found, total = await self.store.list_runs(where, limit=limit, offset=offset)
        return [self._fresher(run) for run in found], total

    def _fresher(self, stored: Run) -> Run:
        """The cached copy of an active run has its latest progress; the stored one its node."""
        cached = self.table.runs.get(stored.id)
        if cached is None:
            return stored
        if cached.node is None:
            cached.node = stored.node
        return cached

    async def last_runs_of(self, jobs: Iterable[str]) -> dict[str, Run]:
        return await self.store.last_runs(jobs)

    def queued_count(self) -> int:
        return self.table.count(RunStatus.PENDING)

    def processing_count(self) -> int:
        return self.table.count(RunStatus.PROCESSING)

    def queue_snapshot(self, workers_total: int) -> dict[str, Any]:
        pending = {i: run for i, run in self.table.runs.items() if run.status is RunStatus.PENDING}
        return queue_snapshot(
            self.table.totals, pending, self.processing_count(), workers_total=workers_total, now=self.clock()
        )
