"""Executing runs on this node: claims batched into a local buffer the worker pool takes from,
progress and ends handed to the group-committing writer (each checked against its claim
token), cancel requests from other nodes, the take-over of dead nodes' runs, and fencing."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from jobd.cluster import runtable, writes
from jobd.cluster.chaining import Chainer
from jobd.cluster.wakeup import Signal
from jobd.cluster.writer import EndWriter
from jobd.config import JobConfig
from jobd.lifecycle import admission, chains
from jobd.lifecycle.backend import Feed, FinishedHook
from jobd.lifecycle.transitions import ended_copy, publish_log, retry_after_failure, retry_after_interrupt
from jobd.models import InvalidTransition, Run, RunStatus
from jobd.notify import plan
from jobd.store.base import JobState
from jobd.store.notifications import NewNotification
from jobd.store.postgres import events, notifications, runs
from jobd.store.postgres.runs import Claimed, Conn

CLAIM_BATCH = 64


class RecentLines:
    """The last lines of each run this node executes, and of the last runs it finished: a stream
    that another node moves here when the run starts opens with the lines written before it
    connected (a short run may be over by then). Bounded: lines per run, and finished runs."""

    PER_RUN = 500
    FINISHED = 256

    def __init__(self) -> None:
        self._running: dict[int, collections.deque[tuple[str, str]]] = {}
        self._finished: collections.OrderedDict[int, collections.deque[tuple[str, str]]] = collections.OrderedDict()

    def add(self, run_id: int, stream: str, line: str) -> None:
        lines = self._running.get(run_id)
        if lines is None:
            lines = self._running[run_id] = collections.deque(maxlen=self.PER_RUN)
        lines.append((stream, line))

    def ended(self, run_id: int) -> None:
        lines = self._running.pop(run_id, None)
        if lines is not None:
            self._finished[run_id] = lines
            if len(self._finished) > self.FINISHED:
                self._finished.popitem(last=False)

    def of(self, run_id: int) -> list[tuple[str, str]]:
        return list(self._running.get(run_id) or self._finished.get(run_id) or ())


def _no_id() -> int:
    return 0


class Execution:
    """The executing half of PostgresBackend (which sets these attributes up)."""

    _jobs: dict[str, JobConfig]
    pool: AsyncConnectionPool[Conn]
    node: str
    capacity: int
    clock: Callable[[], int]
    rng: random.Random
    log: Any
    accepting: bool
    fenced: bool
    table: runtable.RunTable
    writer: EndWriter
    chainer: Chainer
    _feed: Feed | None
    _stop_run: Callable[[int], None]
    _hooks: list[FinishedHook]
    _tokens: dict[int, Claimed]
    _executing: set[int]
    _cancel_requested: set[int]
    _ending: set[int]
    _buffer: asyncio.Queue[tuple[Run, JobConfig]]
    _recent_lines: RecentLines
    _wakeup: Signal
    _control: Signal
    _states: dict[str, JobState]
    _claim_groups: runs.ClaimGroups

    def _fence(self, reason: str) -> None:
        self.fenced = True
        while not self._buffer.empty():
            run, _ = self._buffer.get_nowait()
            self._executing.discard(run.id)
        for run_id in list(self._tokens):
            self._stop_run(run_id)

    def _unfence(self) -> None:
        self.fenced = False
        self._wakeup.set()

    # -- executing ---------------------------------------------------------------------------------

    async def claim(self) -> tuple[Run, JobConfig]:
        return await self._buffer.get()

    async def _claim_loop(self) -> None:
        while True:
            free = self.capacity - len(self._executing)
            if free <= 0 or self.fenced or not self.accepting:
                await self._wakeup.wait()
                continue
            caps = {name: admission.slot_limit(job) for name, job in self._jobs.items()}
            try:
                claimed = await self._claim(min(free, CLAIM_BATCH), caps)
            except psycopg.Error as exc:
                self.log.warning("claim_failed", error=str(exc))
                await self._wakeup.wait()
                continue
            for c in claimed:
                self._tokens[c.run.id] = c
                self._executing.add(c.run.id)
                self.table.put(c.run.copy())  # the worker's copy is its own: the feed lags behind it
                self._buffer.put_nowait((c.run, self._jobs[c.run.job]))
            if len(claimed) < min(free, CLAIM_BATCH):
                await self._wakeup.wait()

    async def _claim(self, limit: int, caps: dict[str, int]) -> list[Claimed]:
        async with self.pool.connection() as conn:
            if not any(job.notify.on_start for job in self._jobs.values()):
                return await runs.claim(
                    conn, self.node, limit, caps, groups=self._claim_groups
                )  # autocommit: one statement, announced
            # Jobs that notify of their start: the notifications commit with the claim.
            async with conn.transaction():
                claimed = await runs.claim(conn, self.node, limit, caps, groups=self._claim_groups)
                now = self.clock()
                made = [n for c in claimed for n in plan.run_started(self._jobs.get(c.run.job), c.run, now)]
                await notifications.insert(conn, made)
            return claimed

    def _plan_end(self, final: Run, again: Run | None, streak: int) -> list[NewNotification]:
        job = self._jobs.get(final.job)
        return plan.run_ended(job, final, streak, retrying=again is not None, now=final.updated_at)

    def _pause_after(self, job: str) -> int | None:
        config = self._jobs.get(job)
        return config.rules.pause_after_failures if config is not None else None

    def release(self, run: Run) -> None:
        self._executing.discard(run.id)
        self._wakeup.set()

    def cancel_requested(self, run_id: int) -> bool:
        return run_id in self._cancel_requested

    async def _cancel_loop(self) -> None:
        while True:
            await self._control.wait()
            if not self._tokens:
                continue
            try:
                async with self.pool.connection() as conn:
                    ids = await runs.cancel_requests(conn, self.node)
            except psycopg.Error:
                continue
            for run_id in ids:
                if run_id in self._tokens and run_id not in self._cancel_requested:
                    self._cancel_requested.add(run_id)
                    self._stop_run(run_id)

    def report(self, run: Run) -> None:
        run.updated_at = self.clock()
        claim = self._tokens.get(run.id)
        if claim is not None:
            self.writer.progress(run, claim.token)

    def report_log(self, run: Run, line: str, stream: str) -> None:
        self._recent_lines.add(run.id, stream, line)
        publish_log(self._feed, run, line, stream)  # this node's streams; other nodes relay them

    def lines_so_far(self, run_id: int) -> list[tuple[str, str]]:
        """(stream, line) of the run's last lines, while this node executes it and for a while after."""
        return self._recent_lines.of(run_id)

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
        # Built with id 0: the cluster's sequence numbers it when it is written.
        again = retry_after_failure(run, status, self._jobs.get(run.job), rng=self.rng, clock=self.clock, new_id=_no_id)
        return self._end(run, status, error=error, exit_code=exit_code, log_tail=log_tail, again=again)

    def interrupt(self, run: Run, reason: str) -> asyncio.Future[None]:
        again = retry_after_interrupt(run, self._jobs.get(run.job), clock=self.clock, new_id=_no_id)
        return self._end(run, RunStatus.FAILED, error=reason, again=again)

    def _end(
        self,
        run: Run,
        status: RunStatus,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        log_tail: str | None = None,
        again: Run | None,
    ) -> asyncio.Future[None]:
        if run.status.terminal or run.id in self._ending:
            raise InvalidTransition(run.id, run.status, status)
        self._ending.add(run.id)
        final = ended_copy(run, status, self.clock(), error=error, exit_code=exit_code, log_tail=log_tail)
        final.node = self.node
        claim = self._tokens.get(run.id)
        done = self.writer.end(final, None if claim is None else claim.token, again)

        def committed(future: asyncio.Future[None]) -> None:
            self._ending.discard(run.id)
            if not future.cancelled() and future.exception() is None:
                run.assign(final)

        done.add_done_callback(committed)
        return done

    def _ended(self, final: Run, written: bool, streak: int) -> None:
        self._recent_lines.ended(final.id)
        self._tokens.pop(final.id, None)
        self._cancel_requested.discard(final.id)
        if not written:
            self.log.warning("finish_fenced", run_id=final.id, job=final.job, status=final.status.value)
            return
        self.log.info("run_finished", run_id=final.id, job=final.job, status=final.status.value, error=final.error)
        chains.log_children(self.log, final)
        self.table.ended(final)
        state = self._states.get(final.job)
        if state is None:
            state = self._states[final.job] = JobState(final.job)
        if final.status is RunStatus.FAILED:
            state.consecutive_failures = streak + 1
        elif final.status is not RunStatus.CANCELLED:
            state.consecutive_failures = 0
        state.last_run_id = max(final.id, state.last_run_id or 0)
        job = self._jobs.get(final.job)
        if job is not None:
            for hook in self._hooks:
                try:
                    hook(job, final, state, streak)
                except Exception:  # a hook (metrics, alerts) must never fail a run
                    self.log.exception("finished_hook_failed", run_id=final.id, job=final.job)

    async def _take_over(self, conn: Conn, claimed: Sequence[Claimed], error: str) -> Callable[[], None]:
        """End runs whose node is gone, as a crash would (on_interrupt), in the caller's
        transaction; `error` is their whole error text, "interrupted: " and why. Returns what to
        call once it is committed: the runs' ends are this node's to announce to its hooks (an
        alert for a streak they bring to its threshold included)."""
        finals = []
        for c in claimed:
            again = retry_after_interrupt(c.run, self._jobs.get(c.run.job), clock=self.clock, new_id=_no_id)
            final = ended_copy(c.run, RunStatus.FAILED, self.clock(), error=error)
            finals.append((final, c.token, again))
        streaks = await (
            await writes.ended(conn, finals, plan=self._plan_end, chainer=self.chainer, pause_after=self._pause_after)
        ).streaks()
        await events.notify_wakeup(conn)
        ended = [(final, streaks[final.id]) for final, _, _ in finals if final.id in streaks]

        def committed() -> None:
            for final, streak in ended:
                self._ended(final, True, streak)

        return committed
