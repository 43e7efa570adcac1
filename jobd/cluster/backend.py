"""The cluster's run backend: several jobd nodes on one PostgreSQL.

Every change is one transaction that writes the run and its event row; the event bus hears of
changes only from the tailed events table (eventfeed.py), so each node shows every run. Claims
are batched into a local buffer that the worker pool takes from; terminal writes are grouped
(several runs' ends in one transaction), each checked against its claim token.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from jobd.cluster import backfill, runtable, writes
from jobd.cluster.alarms import Alarms
from jobd.cluster.chaining import Chainer
from jobd.cluster.creating import Creator
from jobd.cluster.eventfeed import EventTail, encode
from jobd.cluster.execution import Execution, RecentLines
from jobd.cluster.nodes import NodeLife
from jobd.cluster.reads import Reads
from jobd.cluster.wakeup import Listener, Notifier
from jobd.cluster.writer import EndWriter
from jobd.config import ClusterConfig, GroupConfig, JobConfig
from jobd.errors import Conflict, JobNotFound, OverlapConflict, RunNotFound, Unavailable
from jobd.lifecycle import admission, retry
from jobd.lifecycle.backend import Feed, FinishedHook, Submission
from jobd.lifecycle.groups import claim_arguments
from jobd.lifecycle.jobstate import excluded_event
from jobd.models import Run, RunStatus, TriggerSource, iso_ms, now_ms
from jobd.store.base import DeletedRuns, JobState
from jobd.store.postgres import OwnConnection, cluster, events, runs
from jobd.store.postgres.runs import Claimed, Conn
from jobd.store.postgres.store import PostgresStore


class PostgresBackend(Execution, Reads):
    def __init__(
        self,
        *,
        jobs: Mapping[str, JobConfig],
        pool: AsyncConnectionPool[Conn],
        dsn: str,
        store: PostgresStore,
        config: ClusterConfig,
        capacity: int,
        host: str,
        pid: int,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self._jobs = dict(jobs)
        self._groups: dict[str, GroupConfig] = {}
        self._aging_ms = 0
        self._claim_groups = runs.ClaimGroups()
        self.pool = pool
        self.store = store
        self.node = config.node_name
        self.capacity = capacity
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or structlog.get_logger("jobd.runs")
        self.accepting = True
        self.fenced = False
        self.table = runtable.RunTable()
        self._states: dict[str, JobState] = {}
        self._feed: Feed | None = None
        self._stop_run: Callable[[int], None] = lambda run_id: None
        self._hooks: list[FinishedHook] = []
        self._tokens: dict[int, Claimed] = {}  # runs this node executes → their claims
        self._executing: set[int] = set()
        self._cancel_requested: set[int] = set()
        self._ending: set[int] = set()
        self._buffer: asyncio.Queue[tuple[Run, JobConfig]] = asyncio.Queue()
        self._recent_lines = RecentLines()  # see Execution.report_log
        self.listener = Listener(
            dsn, (events.CHANNEL_WAKEUP, events.CHANNEL_CONTROL, events.CHANNEL_EVENTS), rng=self.rng
        )
        self._wakeup = self.listener.signal(events.CHANNEL_WAKEUP)
        self._control = self.listener.signal(events.CHANNEL_CONTROL)
        self._notify_wakeup = Notifier(pool.connection, events.CHANNEL_WAKEUP)
        self.alarms = Alarms(lambda: self.clock())
        self.tail = EventTail(
            pool.connection, self.listener.signal(events.CHANNEL_EVENTS), self._delivered, log=self.log
        )
        self.chainer = Chainer(lambda: self._jobs, self._cancel_locked)
        self.writer = EndWriter(
            pool.connection,
            self._ended,
            log=self.log,
            plan=self._plan_end,
            chainer=self.chainer,
            pause_after=self._pause_after,
        )
        self.creator = Creator(
            pool.connection,
            new_run=lambda job, submission, source, at: self._new_run(
                job, submission.params, source, at, run_after=submission.run_after, priority=submission.priority
            ),
            clock=lambda: self.clock(),  # read at each use: tests move the clock
            replace=self._cancel_locked,
            created=self._created,
        )
        self._beat_connection = OwnConnection(dsn)
        self.life = NodeLife(
            pool.connection,
            config,
            host=host,
            pid=pid,
            take_over=self._take_over,
            fence=self._fence,
            unfence=self._unfence,
            beat_connection=self._beat_connection,
            log=self.log,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- start and stop ----------------------------------------------------------------------------

    def feed_to(self, feed: Feed) -> None:
        self._feed = feed

    def on_cancel(self, stop: Callable[[int], None]) -> None:
        self._stop_run = stop

    def on_finished(self, hook: FinishedHook) -> None:
        self._hooks.append(hook)

    async def open(self, *, interrupted: str) -> None:
        await self.life.register()
        async with self.pool.connection() as conn:
            self._states = {s.job: s for s in await cluster.load_job_states(conn)}
            await self.table.load_totals(conn)
            for run in await runtable.load_active(conn):
                self.table.loaded(run)
                if run.status is RunStatus.PENDING:
                    self.alarms.at(run.run_after, self._wakeup.set)  # every node loads it: each wakes itself
            mine = await runs.owned_runs(conn, self.node)  # left by an earlier life of this node
        await self.tail.start_at_end()
        if mine:
            async with self.pool.connection() as conn, conn.transaction():
                committed = await self._take_over(conn, mine, interrupted)
            committed()
        self.listener.start()
        self.writer.start()
        self.creator.start()
        self.life.start()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="pg-claim"),
            asyncio.create_task(self._cancel_loop(), name="pg-cancel"),
        ]

    async def close(self) -> None:
        self.alarms.cancel_all()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.creator.stop()
        await self.writer.stop()
        await self.life.stop(leave=not self._tokens)
        await self._beat_connection.close()
        await self._notify_wakeup.stop()
        await self.tail.stop()
        await self.listener.stop()

    def reconfigure(self, jobs: Mapping[str, JobConfig]) -> None:
        self._jobs = dict(jobs)
        self._set_claim_groups()
        self._wakeup.set()

    def set_groups(self, groups: Mapping[str, GroupConfig], priority_aging_s: float) -> None:
        self._groups = dict(groups)
        self._aging_ms = round(priority_aging_s * 1000)
        self._set_claim_groups()
        self._wakeup.set()

    def _set_claim_groups(self) -> None:
        member_jobs, member_groups, names, caps = claim_arguments(self._groups, self._jobs.values())
        self._claim_groups = runs.ClaimGroups(member_jobs, member_groups, names, caps, self._aging_ms)

    async def wait_settled(self) -> None:
        await self.writer.wait_settled()
        await self.tail.catch_up()  # the bus hears of the ends only from the events table

    @property
    def reachable(self) -> bool:
        return self.life.reachable and not self.fenced

    # -- creating ----------------------------------------------------------------------------------

    def job(self, name: str) -> JobConfig:
        job = self._jobs.get(name)
        if job is None:
            raise JobNotFound(name)
        return job

    def _check_open(self) -> None:
        if not self.accepting:
            raise Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5)
        if not self.life.reachable:
            raise Unavailable("the database is unreachable", retry_after_s=5)

    def _new_run(
        self,
        job: JobConfig,
        params: Mapping[str, Any],
        triggered_by: TriggerSource,
        at: int | None,
        *,
        run_after: int | None = None,
        priority: int | None = None,
    ) -> Run:
        now = self.clock()
        return Run(
            id=0,
            job=job.name,
            status=RunStatus.PENDING,
            triggered_by=triggered_by,
            created_at=now,
            updated_at=now,
            params=job.params.with_defaults(params),
            max_attempts=job.retries + 1,
            scheduled_for=at,
            run_after=run_after,
            priority=job.priority if priority is None else priority,
        )

    async def create(
        self,
        job: str,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str | None = None,
        scheduled_for: int | None = None,
    ) -> list[Run]:
        self._check_open()
        config = self.job(job)
        return await self.creator.create(
            config,
            submissions,
            triggered_by=triggered_by,
            overlap=overlap or config.overlap,
            scheduled_for=scheduled_for,
        )

    def _created(self, new: list[Run]) -> None:
        for run in new:
            self.table.put(run)
            self.alarms.at(run.run_after, self._woken)  # then every node looks, not only this one
        self._woken()

    async def _admit(self, conn: Conn, job: JobConfig, policy: str, count: int, active: runs.Admission) -> None:
        """The overlap policy on the counts taken under the job's lock; the active runs
        themselves are read only when they are refused or replaced (a backlog of thousands of
        PENDING runs of an `allow` job is not read at every trigger)."""
        decision = admission.decide(policy, pending=active.pending, processing=active.processing, count=count)
        if decision is admission.Decision.ADMIT:
            return
        rows = await writes.active_of(conn, job.name)
        if decision is admission.Decision.REFUSE:
            raise admission.refusal(job.name, policy, rows)
        if decision is admission.Decision.REPLACE:
            for run in rows:
                await self._cancel_locked(conn, run, f"replaced by a newer run of {job.name!r}")

    def _woken(self) -> None:
        self._wakeup.set()
        self._notify_wakeup.poke()

    async def fire(
        self, job: str, scheduled_for: int, *, triggered_by: TriggerSource, now: int, overlap: str | None = None
    ) -> Run | None:
        config = self.job(job)
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT paused FROM job_state WHERE job = %s", (job,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                return None  # paused on another node
            if not await cluster.record_fire(conn, job, scheduled_for, self.node):
                return None  # another node made this fire
            counts = await runs.admit(conn, job)
            state = self.job_state(job)
            state.last_fire_at = max(state.last_fire_at or 0, scheduled_for)
            try:
                await self._admit(conn, config, overlap or config.overlap, 1, counts)
            except OverlapConflict as exc:
                state.skipped_fires += 1
                state.last_skipped_at = now
                state.last_skip_reason = "overlap"
                await cluster.save_job_state(conn, state)
                await cluster.settle_fire(conn, job, scheduled_for, None)
                skipped = {
                    "job": job,
                    "scheduled_for": iso_ms(scheduled_for),
                    "skipped_at": iso_ms(now),
                    "skipped_fires": state.skipped_fires,
                    "active_run_ids": exc.extra.get("active_run_ids", []),
                    "reason": exc.detail,
                }
                await events.append_event(conn, "fire_skipped", encode(skipped), job=job)
                await events.notify(conn, events.CHANNEL_EVENTS)
                self.log.info("fire_skipped", **skipped)
                return None
            run = self._new_run(config, {}, triggered_by, scheduled_for)
            await writes.create(conn, [run])
            await cluster.settle_fire(conn, job, scheduled_for, run.id)
            self.table.put(run)
            await conn.execute(
                "INSERT INTO job_state (job, last_fire_at) VALUES (%s, %s) ON CONFLICT (job) DO UPDATE "
                "SET last_fire_at = GREATEST(job_state.last_fire_at, excluded.last_fire_at)",
                (job, scheduled_for),
            )
        self._woken()
        return run

    async def exclude_fire(self, job: str, scheduled_for: int, *, now: int, excluded_by: str) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            state = self.job_state(job)
            if not await cluster.record_excluded(conn, state, scheduled_for, self.node, now):
                return  # another node recorded this fire
            skipped = excluded_event(job, scheduled_for, now, state.skipped_fires, excluded_by)
            await events.append_event(conn, "fire_skipped", encode(skipped), job=job)
            await events.notify(conn, events.CHANNEL_EVENTS)
        self.log.info("fire_skipped", **skipped)

    async def backfill(self, job: str, times: Sequence[int]) -> tuple[list[Run], list[int]]:
        self._check_open()
        config = self.job(job)
        async with self.pool.connection() as conn, conn.transaction():
            made, existing = await backfill.backfill(
                conn, job, times, self.node, lambda at: self._new_run(config, {}, TriggerSource.CATCHUP, at)
            )
        for run in made:
            self.table.put(run)
        if made:
            self._woken()
        return made, existing

    async def retry(self, run_id: int) -> Run:
        self._check_open()
        previous = await self.get(run_id)
        if not previous.status.terminal:
            raise Conflict(
                f"run {run_id} is {previous.status.value}; only a finished run can be retried",
                run_id=run_id,
                run_status=previous.status.value,
            )
        self.job(previous.job)
        again = retry.retry_run(previous, run_id=0, now=self.clock())
        async with self.pool.connection() as conn, conn.transaction():
            await writes.create(conn, [again])
        self.table.put(again)
        self._woken()
        return again

    async def set_paused(self, job: str, paused: bool) -> None:
        async with self.pool.connection() as conn:
            await cluster.set_paused(conn, job, paused)
            await events.notify(conn, events.CHANNEL_CONTROL)
        self.job_state(job).paused = paused
        self.log.info("job_paused" if paused else "job_resumed", job=job)

    # -- operator actions --------------------------------------------------------------------------

    async def cancel(self, run_id: int, *, reason: str = "cancelled", wait: bool = True) -> Run:
        async with self.pool.connection() as conn, conn.transaction():
            locked = await writes.lock_run(conn, run_id)
            if locked is None:
                raise RunNotFound(run_id)
            run, _ = locked
            if run.status.terminal:
                raise Conflict(
                    f"run {run_id} is already {run.status.value}", run_id=run_id, run_status=run.status.value
                )
            await self._cancel_locked(conn, run, reason)
        if wait or run.status is RunStatus.PENDING:
            await self.wait_finished(run)
            return await self.get(run_id)
        return run

    async def _cancel_locked(self, conn: Conn, run: Run, reason: str) -> None:
        if run.status is RunStatus.PENDING:
            final = runtable.ended_copy(run, RunStatus.CANCELLED, self.clock(), error=reason)
            await writes.ended(conn, [(final, None, None)], chainer=self.chainer)
        elif await runs.request_cancel(conn, run.id) is not None:
            await events.notify(conn, events.CHANNEL_CONTROL)
            if run.id in self._tokens:
                self._cancel_requested.add(run.id)
                self._tokens[run.id].run.error = reason
                asyncio.get_running_loop().call_soon(self._stop_run, run.id)

    async def wait_finished(self, run: Run) -> None:
        if run.status.terminal:
            return

        async def still_active() -> bool:
            stored = await self.store.get_run(run.id)
            return stored is not None and not stored.status.terminal

        await self.table.wait_finished(run.id, still_active)

    async def delete_finished(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns:
        batch = await self.store.delete_runs(cutoffs=cutoffs, limit=limit, after=after)
        self.table.totals.deleted(status for _, status in batch.deleted)
        return batch

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int:
        return await self.store.delete_idempotency_keys(created_before=created_before, limit=limit)

    # -- the feed ----------------------------------------------------------------------------------

    async def _delivered(self, batch: Sequence[events.Event]) -> None:
        messages = [runtable.decode(event) for event in batch]  # once, for the table and the bus
        await self.table.apply(batch, messages, self.pool.connection)
        feed = self._feed
        if feed is None:
            return
        for event, message in zip(batch, messages):
            publish: Any = feed.publish
            publish(event.type, message, run_id=event.run_id, job=event.job, status=event.status, event_id=event.key)
