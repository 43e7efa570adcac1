"""Moving this process's runs through their states: PENDING → PROCESSING when a worker claims
one, progress while it runs, a terminal state when it ends, and cancel requests.

A terminal state is written from a copy and shown (in the table, on the feed) only once
committed, so no reader ever sees a finished run that a crash could undo.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

from jobd.config import JobConfig
from jobd.config.chains import NO_CHAIN
from jobd.config.runrules import pauses
from jobd.errors import Conflict, RunNotFound
from jobd.lifecycle import admission, chains, retry
from jobd.lifecycle.active import ActiveRuns
from jobd.lifecycle.backend import Feed, FinishedHook
from jobd.lifecycle.commit import TerminalWrite
from jobd.lifecycle.jobstate import JobStates
from jobd.lifecycle.readyqueue import ReadyQueue
from jobd.lifecycle.views import LastRuns, StatusTotals
from jobd.models import ALLOWED_TRANSITIONS, InvalidTransition, Run, RunStatus, status_update
from jobd.notify import plan
from jobd.store import JobState, Store


def settle_final(
    final: Run,
    *,
    error: str | None = None,
    exit_code: int | None = None,
    log_tail: str | None = None,
) -> Run:
    """Fill in the copy that carries a terminal state (its status and updated_at already set):
    finished then, with the error, exit code and log tail given, and full progress for a success.
    A run that never started keeps started_at (and duration) null."""
    final.finished_at = final.updated_at
    if error is not None:
        final.error = error
    if exit_code is not None:
        final.exit_code = exit_code
    if log_tail is not None:
        final.log_tail = log_tail
    if final.status is RunStatus.COMPLETED or final.status is RunStatus.PARTIAL:
        final.progress = 100.0
    return final


def ended_copy(
    run: Run,
    status: RunStatus,
    now: int,
    *,
    error: str | None = None,
    exit_code: int | None = None,
    log_tail: str | None = None,
) -> Run:
    """A copy of `run` in its terminal `status` at `now`, the run itself left as it is."""
    final = run.copy()
    final.status = status
    final.updated_at = now
    return settle_final(final, error=error, exit_code=exit_code, log_tail=log_tail)


def retry_after_failure(
    run: Run,
    status: RunStatus,
    job: JobConfig | None,
    *,
    rng: random.Random,
    clock: Callable[[], int],
    new_id: Callable[[], int],
) -> Run | None:
    """The next attempt a run ending in `status` calls for (after its backoff), or None."""
    if not retry.retries_after_failure(run, status, job):
        return None
    assert job is not None
    delay = retry.backoff_s(job, run.attempt, rng)
    return retry.retry_run(run, run_id=new_id(), now=clock(), delay_s=delay)


def retry_after_interrupt(
    run: Run, job: JobConfig | None, *, clock: Callable[[], int], new_id: Callable[[], int]
) -> Run | None:
    """The run that repeats one stopped before it ended, when its job's on_interrupt says so."""
    if not retry.retries_after_interrupt(job):
        return None
    return retry.retry_run(run, run_id=new_id(), now=clock())


def publish_log(feed: Feed | None, run: Run, line: str, stream: str) -> None:
    """A line of a run's output, to the streams of this process that follow its log."""
    if feed is not None and feed.wants_logs(run.id):
        feed.publish(
            "log",
            {"run_id": run.id, "job": run.job, "stream": stream, "line": line},
            run_id=run.id,
            job=run.job,
            status=run.status.value,
        )


class Transitions:
    def __init__(
        self,
        *,
        jobs: Callable[[], Mapping[str, JobConfig]],
        store: Store,
        active: ActiveRuns,
        ready: ReadyQueue,
        states: JobStates,
        totals: StatusTotals,
        last: LastRuns,
        clock: Callable[[], int],
        rng: random.Random,
        log: Any,
    ) -> None:
        self._jobs = jobs
        self.store = store
        self.active = active
        self.ready = ready
        self.states = states
        self.totals = totals
        self.last = last
        self.clock = clock
        self.rng = rng
        self.log = log
        self.feed: Feed | None = None
        self.stop_run: Callable[[int], None] = lambda run_id: None
        self.finished_hooks: list[FinishedHook] = []
        self._cancel_requested: set[int] = set()
        # Runs whose PROCESSING commit is in flight → whether they changed since (see _start()).
        self._unannounced: dict[int, bool] = {}

    def publish(self, run: Run, *, coalescible: bool = False) -> None:
        if self.feed is not None:
            self.feed.publish(
                "status_update",
                status_update(run),
                run_id=run.id,
                job=run.job,
                status=run.status.value,
                coalescible=coalescible,
            )

    def _move(self, run: Run, status: RunStatus) -> None:
        if status not in ALLOWED_TRANSITIONS[run.status]:
            raise InvalidTransition(run.id, run.status, status)
        self.totals.moved(run.status, status)
        self.active.moving(run)
        run.status = status
        self.active.moved(run)
        run.updated_at = self.clock()

    # -- claiming ----------------------------------------------------------------------------------

    async def claim(self) -> tuple[Run, JobConfig]:
        while True:
            run = await self.ready.get()
            if not self.active.startable(run):  # cancelled while it waited in the queue
                self.ready.release(run.job, run.id)
                continue
            job = self._jobs().get(run.job)
            if job is None:
                self.finish(run, RunStatus.FAILED, error=retry.no_longer_configured(run.job))
                self.ready.release(run.job, run.id)
                continue
            self._start(run)
            return run, job

    def release(self, run: Run) -> None:
        self.ready.release(run.job, run.id)

    def _start(self, run: Run) -> None:
        """PENDING → PROCESSING. Committed at once, but the handler does not wait for it.

        Its event goes out when the commit is done; changes the handler reports before then are
        held back and announced right after it, so subscribers see the states in order. If jobd
        died before this commit, the run is still PENDING in the store and simply runs again.
        """
        self._move(run, RunStatus.PROCESSING)
        run.started_at = run.updated_at
        announcement = status_update(run)
        self._unannounced[run.id] = False
        notifications = plan.run_started(self._jobs().get(run.job), run, run.updated_at)
        self.store.submit_then(
            lambda error: self._announce_start(run, announcement, error), [run], notifications=notifications
        )

    def _announce_start(self, run: Run, announcement: dict[str, Any], error: Exception | None) -> None:
        changed_since = self._unannounced.pop(run.id, False)
        if error is not None:
            self.log.error("start_not_committed", run_id=run.id, job=run.job)
            return
        if self.feed is not None:
            self.feed.publish("status_update", announcement, run_id=run.id, job=run.job, status="PROCESSING")
        if changed_since and run.status is RunStatus.PROCESSING:
            self.publish(run, coalescible=True)

    def cancel_requested(self, run_id: int) -> bool:
        return run_id in self._cancel_requested

    # -- while it runs -----------------------------------------------------------------------------

    def report(self, run: Run) -> None:
        run.updated_at = self.clock()
        self.store.write_lazy(run)
        if run.id in self._unannounced:
            self._unannounced[run.id] = True
            return
        self.publish(run, coalescible=True)

    def report_log(self, run: Run, line: str, stream: str) -> None:
        publish_log(self.feed, run, line, stream)

    # -- ending ------------------------------------------------------------------------------------

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
        if result is not None:
            run.result = result
        job = self._jobs().get(run.job)
        again = retry_after_failure(run, status, job, rng=self.rng, clock=self.clock, new_id=self.store.allocate_run_id)
        return self.end(run, status, error=error, exit_code=exit_code, log_tail=log_tail, retry=again)

    def interrupt(self, run: Run, reason: str) -> asyncio.Future[None]:
        job = self._jobs().get(run.job)
        again = retry_after_interrupt(run, job, clock=self.clock, new_id=self.store.allocate_run_id)
        return self.end(run, RunStatus.FAILED, error=reason, retry=again)

    def end(
        self,
        run: Run,
        status: RunStatus,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        log_tail: str | None = None,
        retry: Run | None = None,
    ) -> asyncio.Future[None]:
        """Move to a terminal state and hand it to the store; a worker need not wait for the commit."""
        previous_status = run.status
        final = run.copy()
        self._move(final, status)  # raises for a run that has already finished: nothing changes
        self.active.begin_finish(run.id)
        settle_final(final, error=error, exit_code=exit_code, log_tail=log_tail)
        previous_failures = self.states.run_ended(run.job, status, newest_run_id=(retry or run).id)
        state = self.states.of(run.job)
        job = self._jobs().get(run.job)
        if (
            status is RunStatus.FAILED
            and job is not None
            and pauses(job.rules, previous_failures, state.consecutive_failures)
        ):
            state.paused = True  # committed with the failure (pause_after_failures)
        if retry is not None:
            self.active.add(retry)
        # A run that is retried triggers no chain yet: its last attempt will.
        children = self._chain(final) if retry is None else []

        def committed() -> None:
            run.assign(final)
            self._ended(run, previous_status, state, previous_failures, retry)
            for child in children:
                self._chained(child)
            chains.log_children(self.log, final)

        job = self._jobs().get(run.job)
        write = TerminalWrite(
            self.store,
            run,
            [final, *([] if retry is None else [retry]), *children],
            state,
            committed=committed,
            settled=lambda: self.active.end_finish(run.id),
            log=self.log,
            notifications=plan.run_ended(
                job, final, previous_failures, retrying=retry is not None, now=final.updated_at
            ),
        )
        return write.submit()

    def _ended(
        self, run: Run, previous_status: RunStatus, state: JobState, previous_failures: int, again: Run | None
    ) -> None:
        """After the terminal state is committed: leave the table, announce, retry, run the hooks."""
        self.active.remove(run)
        self._cancel_requested.discard(run.id)
        if previous_status is RunStatus.PENDING:  # only a run that never started waits in a line or on a timer
            self.ready.withdraw(run)
        self.last.note(again or run)
        self.publish(run)
        self.log.info(
            "run_finished",
            run_id=run.id,
            job=run.job,
            status=run.status.value,
            duration_ms=run.duration_ms,
            error=run.error,
        )
        if again is not None:
            self.totals.created()
            self.publish(again)
            self.ready.put(again)
            self.log.info(
                "run_retry_scheduled",
                run_id=run.id,
                job=run.job,
                retry_run_id=again.id,
                attempt=again.attempt,
                run_after=again.run_after,
            )
        job = self._jobs().get(run.job)
        if job is not None:
            for hook in self.finished_hooks:
                try:
                    hook(job, run, state, previous_failures)
                except Exception:  # a hook (metrics, alerts) must never fail a run
                    self.log.exception("finished_hook_failed", run_id=run.id, job=run.job)

    # -- chains (see chains.py) ------------------------------------------------------------------

    def _chain(self, final: Run) -> list[Run]:
        """The children of a run's end, admitted by their jobs' overlap policies as it is handed
        to the store (they are committed with it); `final.children` records them."""
        jobs = self._jobs()
        job = jobs.get(final.job)
        if job is None or job.chain is NO_CHAIN or not job.chain.targets():
            return []
        made: list[Run] = []
        record: list[dict[str, Any]] = []
        for link in chains.links(job, final, jobs):
            child_job = jobs.get(link.job)
            reason = link.refused
            if reason is None and child_job is not None:
                reason = self._admit_child(child_job)
            if reason is not None or child_job is None:
                record.append(chains.skipped(link.job, reason or ""))
                continue
            child = chains.child_run(final, child_job, run_id=self.store.allocate_run_id(), now=final.updated_at)
            self.active.add(child)  # counted by the next admission, and found by a cancel
            made.append(child)
            record.append(chains.made(child))
        final.children = record
        return made

    def _admit_child(self, job: JobConfig) -> str | None:
        """The child job's overlap policy, on its active runs now: why it refuses, or None."""
        decision = admission.decide(
            job.overlap,
            pending=self.active.pending_of(job.name),
            processing=self.active.processing_of(job.name),
            count=1,
        )
        if decision is admission.Decision.REFUSE:
            return admission.refusal(job.name, job.overlap, self.active.of_job(job.name)).detail
        if decision is admission.Decision.REPLACE:
            reason = f"replaced by a newer run of {job.name!r}"
            for run in self.active.of_job(job.name):
                if self.active.finishing(run.id):
                    continue
                if run.status is RunStatus.PENDING:
                    self.end(run, RunStatus.CANCELLED, error=reason)
                else:
                    run.error = reason
                    self._cancel_requested.add(run.id)
                    self.stop_run(run.id)
        return None

    def _chained(self, child: Run) -> None:
        """A child, committed with its parent's end: counted, announced, queued."""
        self.totals.created()
        self.last.note(child)
        self.publish(child)
        self.ready.put(child)

    # -- cancel ------------------------------------------------------------------------------------

    async def cancel(self, run_id: int, *, reason: str, wait: bool) -> Run:
        run = self.active.get(run_id)
        if run is None:
            stored = await self.store.get_run(run_id)
            if stored is None:
                raise RunNotFound(run_id)
            raise Conflict(
                f"run {run_id} is already {stored.status.value}", run_id=run_id, run_status=stored.status.value
            )
        if self.active.finishing(run.id):
            await self.active.wait_finished(run)
            if run.status is not RunStatus.CANCELLED:
                raise Conflict(
                    f"run {run_id} is already {run.status.value}", run_id=run_id, run_status=run.status.value
                )
            return run
        if run.status is RunStatus.PENDING:
            await self.end(run, RunStatus.CANCELLED, error=reason)
            return run
        run.error = reason
        self._cancel_requested.add(run_id)
        # The pool stops the handler; without one yet (between the claim and its start) the worker
        # sees cancel_requested() and stops the run there.
        self.stop_run(run_id)
        if wait:
            await self.active.wait_finished(run)
        return run
