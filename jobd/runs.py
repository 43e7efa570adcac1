"""The run table: creating runs, moving them through their states, and the ready queue.

This is the one place where a run changes. Every change goes to the store first and is published
on the event bus once committed, so a subscriber never sees a state the store does not have.
Runs that are PENDING or PROCESSING are kept in memory (`active`); finished ones live in the store.

The ready queue is an asyncio.Queue of runs whose job has a free slot: a slot is reserved when a
run is put on the queue and freed when it finishes, so workers never take a run they cannot start.
Runs over their job's limit wait, in order, in a per-job line; retries wait out their backoff on
a timer before they join.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import structlog

from jobd.config import JobConfig
from jobd.errors import Conflict, JobNotFound, OverlapConflict, RunNotFound, Unavailable
from jobd.events import EventBus
from jobd.models import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    Run,
    RunStatus,
    TriggerSource,
    iso_ms,
    now_ms,
)
from jobd.store import IdempotencyKey, JobState, RunFilter, Store, StoreUnavailable

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
FINISH_RETRY_FIRST_S = 0.5  # a terminal state the store refused is written again after this, doubling
FINISH_RETRY_MAX_S = 30.0
# The error of a run that jobd stopped (or found still PROCESSING after a crash) before it ended.
INTERRUPTED = "interrupted: jobd stopped while the run was in progress"
MAX_BACKOFF_S = 24 * 3600.0
FinishedHook = Callable[[JobConfig, Run, JobState, int], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """One run to create: what the API, the scheduler and retries ask for."""

    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None


class RunService:
    def __init__(
        self,
        *,
        jobs: Mapping[str, JobConfig],
        store: Store,
        bus: EventBus,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self.jobs: dict[str, JobConfig] = dict(jobs)
        self.store = store
        self.bus = bus
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or structlog.get_logger("jobd.runs")
        self.active: dict[int, Run] = {}
        self.queue: asyncio.Queue[Run] = asyncio.Queue()
        self.job_states: dict[str, JobState] = {}
        self.last_runs: dict[str, Run] = {}
        self._last_read: set[str] = set()  # jobs whose last run before this start has been looked for
        self.status_totals: Counter[RunStatus] = Counter()
        self.accepting = True
        self.finished_hooks: list[FinishedHook] = []
        self._active_by_job: dict[str, set[int]] = defaultdict(set)
        # Kept up to date on every transition so that admission and /queue are O(1), not a scan.
        self.pending: dict[int, Run] = {}
        self._pending_by_job: Counter[str] = Counter()
        self._processing_by_job: Counter[str] = Counter()
        self.processing_count = 0
        self._slots_used: Counter[str] = Counter()
        self._waiting: dict[str, deque[Run]] = defaultdict(deque)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        # Runs an operator asked to cancel; any other stop of a running handler is an interruption.
        self.cancel_requested: set[int] = set()
        self._finish_waiters: dict[int, list[asyncio.Future[None]]] = defaultdict(list)
        # Runs whose terminal state is being committed: a worker must not start them meanwhile.
        self._finishing: set[int] = set()
        self._settled = asyncio.Event()  # set while no terminal state awaits its commit
        self._settled.set()
        # Runs whose PROCESSING commit is in flight → whether they changed since (see start()).
        self._unannounced: dict[int, bool] = {}
        self._keys_in_flight: dict[tuple[str, str], asyncio.Future[Run]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # -- start-up ------------------------------------------------------------------------------

    async def load(self, *, on_interrupted: str = INTERRUPTED) -> None:
        """Restore state from the store: job state, totals, and re-queue what was left active."""
        self.job_states = await self.store.job_states()
        self.status_totals = Counter(await self.store.count_by_status())
        for run in await self.store.active_runs():
            self._note_last(run)  # created after the job's last finished run
            job = self.jobs.get(run.job)
            if job is None:
                self._track(run)
                await self._finish(run, RunStatus.FAILED, error=no_longer_configured(run.job))
            elif run.status is RunStatus.PROCESSING:
                self._track(run)
                await self.interrupt(run, on_interrupted)
            else:
                self._track(run)
                self._schedule(run)

    def reconfigure(self, jobs: Mapping[str, JobConfig]) -> None:
        """New job definitions (a reload). Runs not started yet follow them: those of a removed job
        that wait (for a slot, or out a retry's backoff) fail at once rather than wait for ever,
        and a raised concurrency limit lets waiting runs start now."""
        self.jobs = dict(jobs)
        for run_id, timer in list(self._timers.items()):
            run = self.active.get(run_id)
            if run is not None and run.job not in self.jobs:
                timer.cancel()
                del self._timers[run_id]
                self._fail_unconfigured(run)
        for name in list(self._waiting):
            self._admit_waiting(name)

    def _fail_unconfigured(self, run: Run) -> None:
        if run.status is RunStatus.PENDING and run.id not in self._finishing:
            self._finish(run, RunStatus.FAILED, error=no_longer_configured(run.job))

    async def last_runs_of(self, names: Iterable[str]) -> dict[str, Run]:
        """The latest run of each of these jobs that has one. Kept in memory from the run's creation
        on; what came before this start is read from the store when first asked for, rather than
        for every job at start (10,000 jobs: a tenth of a second)."""
        wanted = list(names)
        unread = {}
        for name in wanted:
            state = self.job_states.get(name)
            known = self.last_runs.get(name)
            if (
                name not in self._last_read
                and state
                and state.last_run_id
                and (known is None or known.id < state.last_run_id)
            ):
                unread[state.last_run_id] = name
        if unread:
            for run in await self.store.get_runs(list(unread)):
                self._note_last(run)  # unless one created meanwhile is newer
            self._last_read.update(unread.values())  # also those whose last run retention deleted
        return {name: self.last_runs[name] for name in wanted if name in self.last_runs}

    # -- creating runs ---------------------------------------------------------------------------

    def job(self, name: str) -> JobConfig:
        job = self.jobs.get(name)
        if job is None:
            raise JobNotFound(name)
        return job

    def job_state(self, name: str) -> JobState:
        state = self.job_states.get(name)
        if state is None:
            state = self.job_states[name] = JobState(name)
        return state

    def is_running(self, job: str) -> bool:
        return self._processing_by_job[job] > 0

    def active_of(self, job: str) -> list[Run]:
        return sorted((self.active[i] for i in self._active_by_job.get(job, ())), key=lambda r: r.id)

    async def submit(
        self,
        job_name: str,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str | None = None,
        scheduled_for: int | None = None,
        job_state: JobState | None = None,
    ) -> list[Run]:
        """Create runs, commit them, then queue them. Returns once they are durable.

        `job_state`, when given, is committed in the same transaction (the scheduler's last fire).
        """
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        job = self.job(job_name)
        if len(submissions) == 1 and submissions[0].idempotency_key:
            return [await self._submit_idempotent(job, submissions[0], triggered_by, overlap, scheduled_for)]
        await self._admit(job, overlap or job.overlap, len(submissions))
        now = self.clock()
        runs = [
            Run(
                id=self.store.allocate_run_id(),
                job=job.name,
                status=RunStatus.PENDING,
                triggered_by=triggered_by,
                created_at=now,
                updated_at=now,
                params=dict(s.params),
                max_attempts=job.retries + 1,
                scheduled_for=scheduled_for,
            )
            for s in submissions
        ]
        keys = [
            IdempotencyKey(job.name, s.idempotency_key, run.id, now)
            for s, run in zip(submissions, runs)
            if s.idempotency_key
        ]
        await self._create(runs, keys, job_states=[job_state] if job_state is not None else [])
        return runs

    async def _submit_idempotent(
        self,
        job: JobConfig,
        submission: Submission,
        triggered_by: TriggerSource,
        overlap: str | None,
        scheduled_for: int | None,
    ) -> Run:
        assert submission.idempotency_key
        token = (job.name, submission.idempotency_key)
        in_flight = self._keys_in_flight.get(token)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._keys_in_flight[token] = future
        try:
            since = self.clock() - IDEMPOTENCY_WINDOW_MS
            existing = await self.store.find_idempotent(job.name, submission.idempotency_key, since)
            if existing is not None:
                run = await self.get(existing)
            else:
                plain = Submission(submission.params)
                [run] = await self.submit(
                    job.name, [plain], triggered_by=triggered_by, overlap=overlap, scheduled_for=scheduled_for
                )
                await self.store.write(
                    keys=[IdempotencyKey(job.name, submission.idempotency_key, run.id, run.created_at)]
                )
            future.set_result(run)
            return run
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lone caller leaves no "never retrieved" warning
            raise
        finally:
            del self._keys_in_flight[token]

    async def _admit(self, job: JobConfig, policy: str, count: int) -> None:
        """Apply the overlap policy to `count` new runs of `job`."""
        pending = self._pending_by_job[job.name]
        busy = pending + self._processing_by_job[job.name]
        if policy == "skip" and (busy or count > 1):
            active = self.active_of(job.name)
            detail = (
                f"job {job.name!r} already has run {active[0].id} {active[0].status.value}"
                if active
                else f"job {job.name!r} allows one run at a time (overlap=skip)"
            )
            raise OverlapConflict(detail, job=job.name, active_run_ids=[r.id for r in active])
        if policy == "buffer_one" and (pending or count > 1):
            active = self.active_of(job.name)
            waiting = [r.id for r in active if r.status is RunStatus.PENDING]
            raise OverlapConflict(
                f"job {job.name!r} already has run {waiting[0] if waiting else '?'} waiting (overlap=buffer_one)",
                job=job.name,
                active_run_ids=[r.id for r in active],
            )
        if policy == "replace" and busy:
            # Ask the active runs to stop without waiting for a slow process to exit: the new run
            # takes the slot when it frees, and the scheduler and the caller move on at once. A run
            # already finishing (or that finished while an earlier one was cancelled) is left be.
            for run in self.active_of(job.name):
                if run.id in self.active and run.id not in self._finishing:
                    await self.cancel(run.id, reason=f"replaced by a newer run of {job.name!r}", wait=False)

    async def _create(
        self, runs: list[Run], keys: Sequence[IdempotencyKey] = (), job_states: Sequence[JobState] = ()
    ) -> None:
        for run in runs:
            self._track(run)
        try:
            await self.store.write(runs, job_states=[s.copy() for s in job_states], keys=keys)
        except BaseException:
            for run in runs:
                self._count(run, -1)
                self._untrack(run)
            raise
        for run in runs:
            self.status_totals[RunStatus.PENDING] += 1
            self._note_last(run)
            self._publish(run)
            self._schedule(run)

    def _count(self, run: Run, delta: int) -> None:
        if run.status is RunStatus.PENDING:
            self._pending_by_job[run.job] += delta
            if delta > 0:
                self.pending[run.id] = run
            else:
                self.pending.pop(run.id, None)
        elif run.status is RunStatus.PROCESSING:
            self._processing_by_job[run.job] += delta
            self.processing_count += delta

    def _track(self, run: Run) -> None:
        self._count(run, +1)
        self.active[run.id] = run
        self._active_by_job[run.job].add(run.id)
        self._idle.clear()

    def _untrack(self, run: Run) -> None:
        self.active.pop(run.id, None)
        ids = self._active_by_job.get(run.job)
        if ids is not None:
            ids.discard(run.id)
            if not ids:
                del self._active_by_job[run.job]
        if not self.active:
            self._idle.set()

    # -- the ready queue -----------------------------------------------------------------------

    def slot_limit(self, job: JobConfig) -> int:
        return 1 if job.overlap == "queue" else job.max_concurrency

    def _schedule(self, run: Run) -> None:
        """Put a PENDING run on its way: wait out run_after, then a slot, then the queue."""
        delay_ms = (run.run_after or 0) - self.clock()
        if delay_ms > 0:
            loop = asyncio.get_running_loop()
            self._timers[run.id] = loop.call_later(delay_ms / 1000, self._timer_fired, run)
            return
        job = self.jobs.get(run.job)
        if job is None:  # removed by a reload while the run waited
            self._fail_unconfigured(run)
            return
        if self._slots_used[run.job] >= self.slot_limit(job):
            self._waiting[run.job].append(run)
            return
        self._slots_used[run.job] += 1
        self.queue.put_nowait(run)

    def _timer_fired(self, run: Run) -> None:
        self._timers.pop(run.id, None)
        if run.status is RunStatus.PENDING:
            run.run_after = None
            self._schedule(run)

    def release_slot(self, job: str) -> None:
        """A run of `job` left the worker: its slot goes to the next one waiting, if any."""
        self._slots_used[job] -= 1
        if self._slots_used[job] <= 0:
            del self._slots_used[job]
        self._admit_waiting(job)

    def _admit_waiting(self, name: str) -> None:
        """Move runs waiting in the job's line to the queue while it has free slots."""
        waiting = self._waiting.get(name)
        job = self.jobs.get(name)
        while waiting and (job is None or self._slots_used[name] < self.slot_limit(job)):
            run = waiting.popleft()
            if run.status is RunStatus.PENDING:
                self._schedule(run)
        if waiting is not None and not waiting:
            self._waiting.pop(name, None)

    def queued_count(self) -> int:
        return len(self.pending)

    # -- transitions ---------------------------------------------------------------------------

    def _transition(self, run: Run, status: RunStatus) -> None:
        if status not in ALLOWED_TRANSITIONS[run.status]:
            raise InvalidTransition(run.id, run.status, status)
        self.status_totals[run.status] -= 1
        self.status_totals[status] += 1
        self._count(run, -1)
        run.status = status
        self._count(run, +1)
        run.updated_at = self.clock()

    def startable(self, run: Run) -> bool:
        return run.status is RunStatus.PENDING and run.id not in self._finishing

    def start(self, run: Run) -> None:
        """PENDING → PROCESSING. Committed at once, but the handler does not wait for it.

        Its event goes out when the commit is done; changes the handler reports before then are
        held back and announced right after it, so subscribers see the states in order. If jobd
        died before this commit, the run is still PENDING in the store and simply runs again.
        """
        self._transition(run, RunStatus.PROCESSING)
        run.started_at = run.updated_at
        announcement = status_update(run)
        self._unannounced[run.id] = False
        self.store.submit_then(lambda error: self._announce_start(run, announcement, error), [run])

    def _announce_start(self, run: Run, announcement: dict[str, Any], error: Exception | None) -> None:
        changed_since = self._unannounced.pop(run.id, False)
        if error is not None:
            self.log.error("start_not_committed", run_id=run.id, job=run.job)
            return
        self.bus.publish("status_update", announcement, run_id=run.id, job=run.job, status="PROCESSING")
        if changed_since and run.status is RunStatus.PROCESSING:
            self._publish(run, coalescible=True)

    def attach_task(self, run: Run, task: asyncio.Task[Any]) -> None:
        """The task running the handler: what `cancel()` stops."""
        self._tasks[run.id] = task

    def detach_task(self, run: Run, task: asyncio.Task[Any]) -> None:
        """The handler has ended: `task` (a worker's, which goes on to other runs) is not the run's any more."""
        if self._tasks.get(run.id) is task:
            del self._tasks[run.id]

    def report_progress(self, run: Run, percent: float, message: str | None) -> None:
        run.progress = max(0.0, min(100.0, float(percent)))
        if message is not None:
            run.message = message
        self._changed_in_memory(run)

    def report_counts(self, run: Run, **counts: int | None) -> None:
        for name, value in counts.items():
            if value is not None:
                setattr(run.counts, name, int(value))
        self._changed_in_memory(run)

    def report_result(self, run: Run, value: Any) -> None:
        run.result = value
        run.updated_at = self.clock()

    def report_log(self, run: Run, line: str, stream: str) -> None:
        if self.bus.wants_logs(run.id):
            self.bus.publish(
                "log",
                {"run_id": run.id, "job": run.job, "stream": stream, "line": line},
                run_id=run.id,
                job=run.job,
                status=run.status.value,
            )

    def _changed_in_memory(self, run: Run) -> None:
        run.updated_at = self.clock()
        self.store.write_lazy(run)
        if run.id in self._unannounced:
            self._unannounced[run.id] = True
            return
        self._publish(run, coalescible=True)

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
        """Record a terminal state (and the retry it calls for); done once committed."""
        if result is not None:
            run.result = result
        retry = None
        job = self.jobs.get(run.job)
        # Also while shutting down: the retry is committed with the failure and runs after the restart.
        if status is RunStatus.FAILED and job is not None and run.attempt < run.max_attempts:
            retry = self._retry_run(run, job, delay_s=self.backoff_s(job, run.attempt))
        return self._finish(run, status, error=error, exit_code=exit_code, log_tail=log_tail, retry=retry)

    def backoff_s(self, job: JobConfig, attempt: int) -> float:
        """How long the retry after failed attempt `attempt` waits: exponential, ±20 % jitter, at most a day."""
        base = job.retry_backoff_s * (2 ** (attempt - 1))
        return min(MAX_BACKOFF_S, base * self.rng.uniform(0.8, 1.2))

    def _retry_run(self, previous: Run, job: JobConfig, *, delay_s: float, attempt: int | None = None) -> Run:
        now = self.clock()
        attempt = attempt or previous.attempt + 1
        return Run(
            id=self.store.allocate_run_id(),
            job=previous.job,
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.RETRY,
            created_at=now,
            updated_at=now,
            params=dict(previous.params),
            attempt=attempt,
            max_attempts=max(previous.max_attempts, attempt),
            scheduled_for=previous.scheduled_for,
            run_after=now + round(delay_s * 1000) if delay_s > 0 else None,
            retry_of=previous.id,
        )

    def _finish(
        self,
        run: Run,
        status: RunStatus,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        log_tail: str | None = None,
        retry: Run | None = None,
    ) -> asyncio.Future[None]:
        """Move to a terminal state and hand it to the store. A worker need not wait for the
        commit: the terminal state is written from a copy and shown (in `active`, in events)
        only once committed, so no reader ever sees a finished run that a crash could undo."""
        previous_status = run.status
        final = run.copy()
        self._transition(final, status)  # raises for a run that has already finished: nothing changes
        self._finishing.add(run.id)
        self._settled.clear()
        final.finished_at = final.updated_at  # a run that never started keeps started_at (and duration) null
        if error is not None:
            final.error = error
        if exit_code is not None:
            final.exit_code = exit_code
        if log_tail is not None:
            final.log_tail = log_tail
        if status is RunStatus.COMPLETED or status is RunStatus.PARTIAL:
            final.progress = 100.0
        state = self.job_state(run.job)
        previous_failures = state.consecutive_failures
        _count_outcome(state, status, newest_run_id=(retry or run).id)
        rows = [final] if retry is None else [final, retry]
        if retry is not None:
            self._track(retry)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        attempts = 0

        def submit() -> None:
            try:
                self.store.submit_then(on_commit, rows, job_states=[state.copy()])
            except Exception as exc:  # the store has closed: the next start finds the run interrupted
                settle()
                self.log.error("finish_abandoned", run_id=run.id, job=run.job, error=str(exc))
                _fail_quietly(done, exc)

        def settle() -> None:
            self._finishing.discard(run.id)
            if not self._finishing:
                self._settled.set()

        def on_commit(error: Exception | None) -> None:
            nonlocal attempts
            if error is not None and not isinstance(error, StoreUnavailable):
                # Rows SQLite cannot take (no known input now): retrying would fail every batch
                # they joined. The next start finds the run interrupted.
                settle()
                self.log.error("finish_not_committed", run_id=run.id, job=run.job, error=repr(error), retry_in_s=None)
                _fail_quietly(done, error)
                return
            if error is not None:
                # The run has ended; the store must say so once it can write again (a full disk
                # freed, a lock released, an I/O error gone). Until then it shows its last
                # committed state.
                attempts += 1
                delay = min(FINISH_RETRY_MAX_S, FINISH_RETRY_FIRST_S * 2 ** (attempts - 1))
                self.log.error(
                    "finish_not_committed",
                    run_id=run.id,
                    job=run.job,
                    error=str(error),
                    attempt=attempts,
                    retry_in_s=delay,
                )
                loop.call_later(delay, submit)
                _fail_quietly(done, error)  # whoever waits (a cancel request) hears of it now
                return
            settle()
            try:
                run.assign(final)
                self._finished(run, status, previous_status, state, previous_failures, retry)
            except Exception as exc:  # keep the run table alive whatever happens in a callback
                self.log.exception("finish_failed", run_id=run.id, job=run.job)
                _fail_quietly(done, exc)
                return
            if not done.done():
                done.set_result(None)

        submit()
        return done

    def _finished(
        self,
        run: Run,
        status: RunStatus,
        previous_status: RunStatus,
        state: JobState,
        previous_failures: int,
        retry: Run | None,
    ) -> None:
        """After the terminal state is committed: leave the table, announce, retry, run the hooks."""
        self._untrack(run)
        self._tasks.pop(run.id, None)
        self.cancel_requested.discard(run.id)
        timer = self._timers.pop(run.id, None)
        if timer is not None:
            timer.cancel()
        self._note_last(retry or run)
        self._publish(run)
        for waiter in self._finish_waiters.pop(run.id, ()):
            if not waiter.done():
                waiter.set_result(None)
        if previous_status is RunStatus.PENDING:
            self._drop_waiting(run)
        self.log.info(
            "run_finished",
            run_id=run.id,
            job=run.job,
            status=status.value,
            duration_ms=run.duration_ms,
            error=run.error,
        )
        if retry is not None:
            self.status_totals[RunStatus.PENDING] += 1
            self._publish(retry)
            self._schedule(retry)
            self.log.info(
                "run_retry_scheduled",
                run_id=run.id,
                job=run.job,
                retry_run_id=retry.id,
                attempt=retry.attempt,
                run_after=retry.run_after,
            )
        job = self.jobs.get(run.job)
        if job is not None:
            for hook in self.finished_hooks:
                try:
                    hook(job, run, state, previous_failures)
                except Exception:  # a hook (metrics, alerts) must never fail a run
                    self.log.exception("finished_hook_failed", run_id=run.id, job=run.job)

    def _note_last(self, run: Run) -> None:
        """Remember the job's most recent run: the newest one, not the one that finished last."""
        current = self.last_runs.get(run.job)
        if current is None or current.id <= run.id:
            self.last_runs[run.job] = run

    def _drop_waiting(self, run: Run) -> None:
        waiting = self._waiting.get(run.job)
        if waiting and run in waiting:
            waiting.remove(run)

    def interrupt(self, run: Run, reason: str) -> asyncio.Future[None]:
        """A run stopped by shutdown or found after a crash: FAILED, and re-queued unless told not to."""
        job = self.jobs.get(run.job)
        retry = None
        if job is not None and job.on_interrupt == "retry":
            retry = self._retry_run(run, job, delay_s=0)
        return self._finish(run, RunStatus.FAILED, error=reason, retry=retry)

    # -- operator actions ----------------------------------------------------------------------

    async def get(self, run_id: int) -> Run:
        run = self.active.get(run_id)
        if run is None:
            run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def cancel(self, run_id: int, *, reason: str = "cancelled", wait: bool = True) -> Run:
        """Cancel a run; with wait=False a running one may still be stopping on return."""
        run = self.active.get(run_id)
        if run is None:
            stored = await self.get(run_id)
            raise Conflict(
                f"run {run_id} is already {stored.status.value}", run_id=run_id, run_status=stored.status.value
            )
        if run.id in self._finishing:
            await self.wait_finished(run)
            if run.status is not RunStatus.CANCELLED:
                raise Conflict(
                    f"run {run_id} is already {run.status.value}", run_id=run_id, run_status=run.status.value
                )
            return run
        if run.status is RunStatus.PENDING:
            await self._finish(run, RunStatus.CANCELLED, error=reason)
            return run
        run.error = reason
        self.cancel_requested.add(run_id)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
        # Without a task the run is between its PROCESSING commit and its handler's start; the
        # worker sees cancel_requested and stops it there.
        if wait:
            await self.wait_finished(run)
        return run

    async def wait_finished(self, run: Run) -> None:
        """Until the run's terminal state is committed (it leaves `active` only then)."""
        if run.id not in self.active:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._finish_waiters[run.id].append(waiter)
        try:
            await waiter
        finally:
            # A caller that gave up (a timeout, a client gone) must not leave its waiter until the run ends.
            waiters = self._finish_waiters.get(run.id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._finish_waiters[run.id]

    async def retry(self, run_id: int) -> Run:
        """A new run repeating a finished one (an operator's retry)."""
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        previous = await self.get(run_id)
        if not previous.status.terminal:
            raise Conflict(
                f"run {run_id} is {previous.status.value}; only a finished run can be retried",
                run_id=run_id,
                run_status=previous.status.value,
            )
        job = self.job(previous.job)
        retry = self._retry_run(previous, job, delay_s=0)
        await self._create([retry])
        return retry

    def forget(self, statuses: Iterable[RunStatus]) -> None:
        """Finished runs of these statuses were deleted from the store (retention)."""
        for status in statuses:
            self.status_totals[status] -= 1

    async def wait_settled(self) -> None:
        """Until every terminal state handed to the store is committed and announced."""
        await self._settled.wait()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- views -----------------------------------------------------------------------------------

    def _publish(self, run: Run, *, coalescible: bool = False) -> None:
        self.bus.publish(
            "status_update",
            status_update(run),
            run_id=run.id,
            job=run.job,
            status=run.status.value,
            coalescible=coalescible,
        )

    async def list(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        runs, total = await self.store.list_runs(where, limit=limit, offset=offset)
        # The store's copy of an active run may lag behind its latest progress.
        return [self.active.get(run.id, run) for run in runs], total

    def queue_snapshot(self, workers_total: int) -> dict[str, Any]:
        oldest = min((run.created_at for run in islice(self.pending.values(), 64)), default=None)
        return {
            "counts": {status.value: self.status_totals.get(status, 0) for status in RunStatus},
            "pending": len(self.pending),
            "processing": self.processing_count,
            "workers": {"busy": self.processing_count, "total": workers_total},
            "oldest_pending_age_s": None if oldest is None else round((self.clock() - oldest) / 1000, 3),
        }


def _count_outcome(state: JobState, status: RunStatus, *, newest_run_id: int) -> None:
    """A job's failure streak and last run after a run of it ends (a cancellation leaves the streak be)."""
    if status is RunStatus.FAILED:
        state.consecutive_failures += 1
    elif status is not RunStatus.CANCELLED:
        state.consecutive_failures = 0
    state.last_run_id = max(newest_run_id, state.last_run_id or 0)  # a newer run may have started meanwhile


def _fail_quietly(done: asyncio.Future[None], exc: BaseException) -> None:
    """Fail a finish's future with an error already logged: callers that never await it stay quiet."""
    if not done.done():
        done.set_exception(exc)
        done.exception()


def no_longer_configured(job: str) -> str:
    return f"job {job!r} is no longer configured"


def status_update(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "job": run.job,
        "status": run.status.value,
        "progress": run.progress,
        "message": run.message,
        "counts": run.counts.as_dict(),
        "error": run.error,
        "result": run.result,
        "attempt": run.attempt,
        "updated_at": iso_ms(run.updated_at or run.created_at),
    }
