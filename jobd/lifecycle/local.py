"""The single-process run backend: an in-memory ready queue in front of the SQLite store.

Runs that are PENDING or PROCESSING are kept in memory (ActiveRuns); finished ones live in the
store. Every change goes to the store first (group commit) and onto the feed once committed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog

from jobd.config import GroupConfig, JobConfig
from jobd.errors import Conflict, JobNotFound, OverlapConflict, RunNotFound, Unavailable
from jobd.lifecycle import admission, idempotency, retry
from jobd.lifecycle.active import ActiveRuns
from jobd.lifecycle.backend import Feed, FinishedHook, Submission
from jobd.lifecycle.groups import GroupLimits
from jobd.lifecycle.jobstate import JobStates, excluded_event
from jobd.lifecycle.readyqueue import ReadyQueue
from jobd.lifecycle.transitions import Transitions
from jobd.lifecycle.views import LastRuns, StatusTotals, queue_snapshot
from jobd.models import Run, RunStatus, TriggerSource, iso_ms, now_ms
from jobd.store.base import DeletedRuns, IdempotencyKey, JobState, RunFilter, Store


class LocalBackend:
    def __init__(
        self,
        *,
        jobs: Mapping[str, JobConfig],
        store: Store,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self._jobs: dict[str, JobConfig] = dict(jobs)
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or structlog.get_logger("jobd.runs")
        self.accepting = True
        self.states = JobStates()
        self.totals = StatusTotals()
        self.last = LastRuns(store, self.states)
        self._active = ActiveRuns()
        self._groups = GroupLimits(lambda: self._jobs)
        self._ready = ReadyQueue(
            limit_of=self._slot_limit,
            clock=self._now,
            orphaned=self._fail_orphan,
            groups_of=self._groups.groups_of,
            group_limit_of=self._groups.limit_of,
            aging_ms=lambda: self._groups.aging_ms,
        )
        self._keys: idempotency.Coalescer[Run] = idempotency.Coalescer()
        self._backfills: dict[str, asyncio.Lock] = {}
        self._feed: Feed | None = None
        self._moves = Transitions(
            jobs=lambda: self._jobs,
            store=store,
            active=self._active,
            ready=self._ready,
            states=self.states,
            totals=self.totals,
            last=self.last,
            clock=self._now,
            rng=self.rng,
            log=self.log,
        )

    def _now(self) -> int:
        return self.clock()  # looked up at each call: the clock can be replaced (tests)

    # -- start and stop ----------------------------------------------------------------------------

    def feed_to(self, feed: Feed) -> None:
        self._feed = self._moves.feed = feed

    def on_cancel(self, stop: Callable[[int], None]) -> None:
        self._moves.stop_run = stop

    def on_finished(self, hook: FinishedHook) -> None:
        self._moves.finished_hooks.append(hook)

    async def open(self, *, interrupted: str) -> None:
        self.states.replace_all(await self.store.job_states())
        self.totals.reset(await self.store.count_by_status())
        for run in await self.store.active_runs():
            self.last.note(run)  # created after the job's last finished run
            self._active.add(run)
            if run.job not in self._jobs:
                await self._moves.end(run, RunStatus.FAILED, error=retry.no_longer_configured(run.job))
            elif run.status is RunStatus.PROCESSING:
                await self.interrupt(run, interrupted)
            else:
                self._ready.put(run)

    def reconfigure(self, jobs: Mapping[str, JobConfig]) -> None:
        """Runs of a removed job that wait (for a slot, or out a retry's backoff) fail at once
        rather than wait for ever, and a raised concurrency limit lets waiting runs start now."""
        self._jobs = dict(jobs)
        for run in self._ready.withdraw_timed(lambda run: run.job not in self._jobs):
            self._fail_orphan(run)
        self._ready.readmit_all()

    def set_groups(self, groups: Mapping[str, GroupConfig], priority_aging_s: float) -> None:
        self._groups.set(groups, priority_aging_s)
        self._ready.readmit_all()

    async def wait_settled(self) -> None:
        await self._active.wait_settled()

    # -- creating ----------------------------------------------------------------------------------

    def job(self, name: str) -> JobConfig:
        job = self._jobs.get(name)
        if job is None:
            raise JobNotFound(name)
        return job

    async def create(
        self,
        job: str,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str | None = None,
        scheduled_for: int | None = None,
        job_state: JobState | None = None,
    ) -> list[Run]:
        """`job_state`, when given, is committed in the same transaction (a fire's record)."""
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        config = self.job(job)
        if len(submissions) == 1 and submissions[0].idempotency_key:
            key = submissions[0].idempotency_key
            make = lambda: self._create_keyed(config, submissions[0], triggered_by, overlap, scheduled_for)  # noqa: E731
            return [await self._keys.once((job, key), make)]
        await self._admit(config, overlap or config.overlap, len(submissions))
        now = self.clock()
        runs = [
            Run(
                id=self.store.allocate_run_id(),
                job=job,
                status=RunStatus.PENDING,
                triggered_by=triggered_by,
                created_at=now,
                updated_at=now,
                params=config.params.with_defaults(s.params),
                max_attempts=config.retries + 1,
                scheduled_for=scheduled_for,
                run_after=s.run_after,
                priority=config.priority if s.priority is None else s.priority,
            )
            for s in submissions
        ]
        keys = [
            IdempotencyKey(job, s.idempotency_key, run.id, now)
            for s, run in zip(submissions, runs)
            if s.idempotency_key
        ]
        await self._commit_new(runs, keys, [job_state] if job_state is not None else [])
        return runs

    async def _create_keyed(
        self, job: JobConfig, submission: Submission, triggered_by: TriggerSource, overlap: str | None, at: int | None
    ) -> Run:
        assert submission.idempotency_key
        since = idempotency.window_start(self.clock())
        existing = await self.store.find_idempotent(job.name, submission.idempotency_key, since)
        if existing is not None:
            return await self.get(existing)
        [run] = await self.create(
            job.name,
            [Submission(submission.params, run_after=submission.run_after, priority=submission.priority)],
            triggered_by=triggered_by,
            overlap=overlap,
            scheduled_for=at,
        )
        await self.store.write(keys=[IdempotencyKey(job.name, submission.idempotency_key, run.id, run.created_at)])
        return run

    async def _admit(self, job: JobConfig, policy: str, count: int) -> None:
        decision = admission.decide(
            policy,
            pending=self._active.pending_of(job.name),
            processing=self._active.processing_of(job.name),
            count=count,
        )
        if decision is admission.Decision.REFUSE:
            raise admission.refusal(job.name, policy, self._active.of_job(job.name))
        if decision is admission.Decision.REPLACE:
            # Ask the active runs to stop without waiting for a slow process to exit: the new run
            # takes the slot when it frees, and the scheduler and the caller move on at once. A run
            # already finishing (or that finished while an earlier one was cancelled) is left be.
            for run in self._active.of_job(job.name):
                if run.id in self._active and not self._active.finishing(run.id):
                    await self.cancel(run.id, reason=f"replaced by a newer run of {job.name!r}", wait=False)

    async def _commit_new(
        self, runs: list[Run], keys: Sequence[IdempotencyKey] = (), job_states: Sequence[JobState] = ()
    ) -> None:
        for run in runs:
            self._active.add(run)
        try:
            await self.store.write(runs, job_states=[s.copy() for s in job_states], keys=keys)
        except BaseException:
            for run in runs:
                self._active.withdraw(run)
            raise
        for run in runs:
            self.totals.created()
            self.last.note(run)
            self._moves.publish(run)
            self._ready.put(run)

    async def fire(
        self, job: str, scheduled_for: int, *, triggered_by: TriggerSource, now: int, overlap: str | None = None
    ) -> Run | None:
        state = self.states.fired(job, scheduled_for)
        try:
            [run] = await self.create(
                job,
                [Submission()],
                triggered_by=triggered_by,
                overlap=overlap,
                scheduled_for=scheduled_for,
                job_state=state,
            )
            return run
        except OverlapConflict as exc:
            state = self.states.skipped(job, now)
            skipped = {
                "job": job,
                "scheduled_for": iso_ms(scheduled_for),
                "skipped_at": iso_ms(now),
                "skipped_fires": state.skipped_fires,
                "active_run_ids": exc.extra.get("active_run_ids", []),
                "reason": exc.detail,
            }
            self.log.info("fire_skipped", **skipped)
        await self.store.write(job_states=[state])
        if self._feed is not None:
            # Published once committed, like every run change: a listener never sees a count the store lacks.
            self._feed.publish("fire_skipped", skipped, job=job)
        return None

    async def exclude_fire(self, job: str, scheduled_for: int, *, now: int, excluded_by: str) -> None:
        state = self.states.excluded(job, scheduled_for, now)
        skipped = excluded_event(job, scheduled_for, now, state.skipped_fires, excluded_by)
        self.log.info("fire_skipped", **skipped)
        await self.store.write(job_states=[state])
        if self._feed is not None:
            self._feed.publish("fire_skipped", skipped, job=job)

    async def backfill(self, job: str, times: Sequence[int]) -> tuple[list[Run], list[int]]:
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        config = self.job(job)
        # One backfill of a job at a time: the next one reads what this one committed.
        async with self._backfills.setdefault(job, asyncio.Lock()):
            wanted = set(times)
            existing = await self.store.scheduled_times(job, times)
            existing |= {run.scheduled_for for run in self._active.of_job(job) if run.scheduled_for in wanted}
            now = self.clock()
            runs = [
                Run(
                    id=self.store.allocate_run_id(),
                    job=job,
                    status=RunStatus.PENDING,
                    triggered_by=TriggerSource.CATCHUP,
                    created_at=now,
                    updated_at=now,
                    params=config.params.with_defaults({}),
                    max_attempts=config.retries + 1,
                    scheduled_for=at,
                    priority=config.priority,
                )
                for at in times
                if at not in existing
            ]
            if runs:
                await self._commit_new(runs)
        return runs, [at for at in times if at in existing]

    async def retry(self, run_id: int) -> Run:
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        previous = await self.get(run_id)
        if not previous.status.terminal:
            raise Conflict(
                f"run {run_id} is {previous.status.value}; only a finished run can be retried",
                run_id=run_id,
                run_status=previous.status.value,
            )
        self.job(previous.job)
        again = retry.retry_run(previous, run_id=self.store.allocate_run_id(), now=self.clock())
        await self._commit_new([again])
        return again

    async def set_paused(self, job: str, paused: bool) -> None:
        await self.store.write(job_states=[self.states.paused(job, paused)])
        self.log.info("job_paused" if paused else "job_resumed", job=job)

    # -- executing (see transitions.py) ------------------------------------------------------------

    async def claim(self) -> tuple[Run, JobConfig]:
        return await self._moves.claim()

    def release(self, run: Run) -> None:
        self._moves.release(run)

    def cancel_requested(self, run_id: int) -> bool:
        return self._moves.cancel_requested(run_id)

    def report(self, run: Run) -> None:
        self._moves.report(run)

    def report_log(self, run: Run, line: str, stream: str) -> None:
        self._moves.report_log(run, line, stream)

    def finish(
        self,
        run: Run,
        status: RunStatus,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        result: Any = None,
        log_tail: str | None = None,
    ) -> asyncio.Future[None]:
        return self._moves.finish(run, status, error=error, exit_code=exit_code, result=result, log_tail=log_tail)

    def interrupt(self, run: Run, reason: str) -> asyncio.Future[None]:
        return self._moves.interrupt(run, reason)

    async def cancel(self, run_id: int, *, reason: str = "cancelled", wait: bool = True) -> Run:
        return await self._moves.cancel(run_id, reason=reason, wait=wait)

    async def wait_finished(self, run: Run) -> None:
        await self._active.wait_finished(run)

    def _slot_limit(self, name: str) -> int | None:
        job = self._jobs.get(name)
        return None if job is None else admission.slot_limit(job)

    def _fail_orphan(self, run: Run) -> None:
        """A run whose job a reload removed while it waited."""
        if run.status is RunStatus.PENDING and not self._active.finishing(run.id):
            self._moves.end(run, RunStatus.FAILED, error=retry.no_longer_configured(run.job))

    # -- retention ---------------------------------------------------------------------------------

    async def delete_finished(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns:
        batch = await self.store.delete_runs(cutoffs=cutoffs, limit=limit, after=after)
        self.totals.deleted(status for _, status in batch.deleted)
        return batch

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int:
        return await self.store.delete_idempotency_keys(created_before=created_before, limit=limit)

    # -- reading -----------------------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobConfig]:
        return self._jobs

    @property
    def active(self) -> ActiveRuns:
        return self._active

    def active_of(self, job: str) -> list[Run]:
        return self._active.of_job(job)

    def is_running(self, job: str) -> bool:
        return self._active.processing_of(job) > 0

    def job_state(self, job: str) -> JobState:
        return self.states.of(job)

    @property
    def job_states(self) -> Mapping[str, JobState]:
        return self.states

    async def get(self, run_id: int) -> Run:
        run = self._active.get(run_id)
        if run is None:
            run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        runs, total = await self.store.list_runs(where, limit=limit, offset=offset)
        # The store's copy of an active run may lag behind its latest progress.
        return [self._active.get(run.id, run) or run for run in runs], total

    async def last_runs_of(self, jobs: Iterable[str]) -> dict[str, Run]:
        return await self.last.of(jobs)

    def queued_count(self) -> int:
        return len(self._active.pending)

    def processing_count(self) -> int:
        return self._active.processing_count

    def queue_snapshot(self, workers_total: int) -> dict[str, Any]:
        active = self._active
        return queue_snapshot(
            self.totals, active.pending, active.processing_count, workers_total=workers_total, now=self.clock()
        )
