"""The late and long-run checks (a job's `late_after_s`, `max_duration_s`,
`max_duration_p95_factor`), the fires missed while jobd was down, and the notifications of
too-short runs and of jobs paused after failures (see docs/scheduling.md#late-long-and-short-runs).

A loop wakes every `tick_s` on the daemon's clock (the scheduler's, so a test can move it) and
looks at the active runs of the jobs that have these rules: bounded work per tick, at most
`max_alerts` notifications, the rest on the next tick. Each alert is sent once: a key per late
fire and per long run, claimed in memory on a single node and in the `alerts_sent` table in a
cluster, so that only one node sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from jobd.catchup import missed_fires
from jobd.config import JobConfig
from jobd.config.runrules import pause_reason, pauses
from jobd.cronspec import CronSpec
from jobd.lifecycle.backend import RunBackend
from jobd.models import Run, RunStatus, TriggerSource, iso_ms
from jobd.stats import period
from jobd.store import JobState
from jobd.store.base import StoreReads

# How long a job's p95 duration is used before it is read again, and over how many days.
P95_REFRESH_S = 300.0
P95_DAYS = 30
MAX_P95_READS = 10  # per tick: the others are read on the next ticks
# At start, at most this many missed fires of a job are looked at (the count says if there were more).
MISSED_LOOKED_AT = 10
# The keys of alerts sent are kept this long in a cluster's table.
ALERTED_KEEP_MS = 7 * 86_400_000
_FIRES = (TriggerSource.CRON, TriggerSource.CATCHUP)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float, *, exact: bool = False) -> None: ...


class Notifier(Protocol):
    async def notify(self, job: JobConfig, event: str, run: Run | None = None, **fields: Any) -> int: ...


class Alerted(Protocol):
    async def claim(self, key: str, now: int) -> bool: ...

    async def trim(self, before: int) -> None: ...


class MemoryAlerted:
    """A single node's alerts sent: nobody else sends them."""

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}

    async def claim(self, key: str, now: int) -> bool:
        if key in self._keys:
            return False
        self._keys[key] = now
        return True

    async def trim(self, before: int) -> None:
        self._keys = {key: at for key, at in self._keys.items() if at >= before}


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def watched(job: JobConfig) -> bool:
    return job.rules.late_after_s is not None or job.rules.watches_long


class Watcher:
    def __init__(
        self,
        backend: RunBackend,
        notifications: Notifier,
        stats: StoreReads,
        *,
        clock: Clock,
        alerted: Alerted,
        log: Any,
        pause: Callable[[str], Awaitable[None]] | None = None,
        tick_s: float = 1.0,
        max_alerts: int = 50,
    ) -> None:
        self.backend = backend
        self.notifications = notifications
        self.stats = stats
        self.clock = clock
        self.alerted = alerted
        self.log = log
        self.pause = pause
        self.tick_s = tick_s
        self.max_alerts = max_alerts
        self._late_done: set[int] = set()
        self._long_done: set[int] = set()
        self._p95: dict[str, tuple[float, int | None]] = {}
        self._reads_left = MAX_P95_READS
        self._trimmed_at = 0
        self._missed: list[tuple[JobConfig, list[datetime], int]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[Any]] = set()

    # -- start and stop ------------------------------------------------------------------------------

    def start(self, states: Mapping[str, JobState]) -> None:
        """Before the scheduler catches up: the fires missed while jobd was down are found from
        the jobs' last fires, then reported by the loop."""
        now = self.clock.now()
        for job in self.backend.jobs.values():
            late = job.rules.late_after_s
            state = states.get(job.name)
            if late is None or job.schedule is None or state is None or state.paused or state.last_fire_at is None:
                continue
            last = datetime.fromtimestamp(state.last_fire_at / 1000, tz=UTC)
            spec = CronSpec.parse(job.schedule, job.name)
            missed = missed_fires(spec, ZoneInfo(job.timezone), last, now, MISSED_LOOKED_AT, job.window)
            due = [fire for fire in missed.run if (now - fire).total_seconds() >= late]
            if due:
                self._missed.append((job, due, missed.left_out))
        self._task = asyncio.create_task(self._loop(), name="late-long-watch")

    def reconfigure(self) -> None:
        """The jobs changed (a reload): a job that now has these rules is watched from now on."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._sending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the loop ------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            await self._report_missed()
        except Exception:  # the store may be unavailable: the loop goes on all the same
            self.log.exception("missed_fires_report_failed")
        while True:
            jobs = [job for job in self.backend.jobs.values() if watched(job)]
            if not jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.tick(jobs)
            except Exception:
                self.log.exception("late_long_check_failed")
            await self.clock.sleep(self.tick_s)

    async def _report_missed(self) -> None:
        for job, fires, left_out in self._missed:
            claimed = [
                fire for fire in fires if await self.alerted.claim(_late_key(job.name, _ms(fire)), self.backend.clock())
            ]
            if not claimed:
                continue  # another node reported them
            count = len(fires) + left_out
            newest = iso_ms(_ms(fires[-1]))
            reason = f"{count} scheduled fire(s) missed while jobd was down (the newest at {newest})"
            await self.notifications.notify(job, "late", reason=reason, scheduled_for=newest, missed=count)
            self.log.warning("job_late", job=job.name, missed=count, scheduled_for=newest)
        self._missed = []

    async def tick(self, jobs: list[JobConfig]) -> None:
        """One look at the active runs of `jobs` (those with late or long rules)."""
        fire_now = _ms(self.clock.now())
        run_now = self.backend.clock()
        budget = self.max_alerts
        self._reads_left = MAX_P95_READS
        seen: set[int] = set()
        for job in jobs:
            active = self.backend.active_of(job.name)
            running = job.rules.watches_long and any(r.status is RunStatus.PROCESSING for r in active)
            limit_ms = await self._long_limit_ms(job) if running else None
            for run in active:
                seen.add(run.id)
                if budget <= 0:
                    continue
                if run.status is RunStatus.PENDING and self._is_late(job, run, fire_now):
                    self._late_done.add(run.id)
                    budget -= await self._late(job, run, fire_now)
                elif (
                    run.status is RunStatus.PROCESSING
                    and limit_ms is not None
                    and run.started_at is not None
                    and run.id not in self._long_done
                    and run_now - run.started_at > limit_ms
                ):
                    self._long_done.add(run.id)
                    budget -= await self._long(job, run, run_now - run.started_at, limit_ms)
        # Runs no longer active need no memory; late runs of jobs no longer watched neither.
        self._late_done &= seen
        self._long_done &= seen
        if run_now - self._trimmed_at > 3_600_000:
            self._trimmed_at = run_now
            await self.alerted.trim(run_now - ALERTED_KEEP_MS)

    def _is_late(self, job: JobConfig, run: Run, now: int) -> bool:
        late = job.rules.late_after_s
        return (
            late is not None
            and run.scheduled_for is not None
            and run.triggered_by in _FIRES
            and run.id not in self._late_done
            and now - run.scheduled_for >= late * 1000
        )

    async def _late(self, job: JobConfig, run: Run, now: int) -> int:
        assert run.scheduled_for is not None and job.rules.late_after_s is not None
        if not await self.alerted.claim(_late_key(job.name, run.scheduled_for), self.backend.clock()):
            return 0
        waited = (now - run.scheduled_for) / 1000
        reason = f"run {run.id} not started {waited:g}s after its time (late_after_s {job.rules.late_after_s:g})"
        self.log.warning("job_late", job=job.name, run_id=run.id, scheduled_for=iso_ms(run.scheduled_for))
        return await self.notifications.notify(job, "late", run, reason=reason, scheduled_for=iso_ms(run.scheduled_for))

    async def _long(self, job: JobConfig, run: Run, running_ms: int, limit_ms: float) -> int:
        if not await self.alerted.claim(f"long:{run.id}", self.backend.clock()):
            return 0
        rules = job.rules
        limits = []
        if rules.max_duration_s is not None:
            limits.append(f"max_duration_s {rules.max_duration_s:g}")
        p95 = self._p95.get(job.name, (0.0, None))[1]
        if rules.max_duration_p95_factor is not None and p95 is not None:
            limits.append(f"{rules.max_duration_p95_factor:g} × p95 {p95 / 1000:g}s")
        reason = f"running {running_ms / 1000:g}s, past {limit_ms / 1000:g}s ({', '.join(limits)})"
        self.log.warning("run_too_long", job=job.name, run_id=run.id, running_ms=running_ms, limit_ms=limit_ms)
        return await self.notifications.notify(job, "long", run, reason=reason, running_ms=running_ms)

    async def _long_limit_ms(self, job: JobConfig) -> float | None:
        """The shorter of max_duration_s and factor x the job's p95 (read again every
        P95_REFRESH_S); None when neither applies yet (no history)."""
        rules = job.rules
        limits: list[float] = []
        if rules.max_duration_s is not None:
            limits.append(rules.max_duration_s * 1000)
        if rules.max_duration_p95_factor is not None:
            p95 = await self._p95_ms(job.name)
            if p95 is not None:
                limits.append(rules.max_duration_p95_factor * p95)
        return min(limits) if limits else None

    async def _p95_ms(self, job: str) -> int | None:
        loop_now = asyncio.get_running_loop().time()
        cached = self._p95.get(job)
        if cached is not None and (loop_now - cached[0] < P95_REFRESH_S or self._reads_left <= 0):
            return cached[1]
        if self._reads_left <= 0:
            return None  # read on a later tick
        self._reads_left -= 1
        first_day, last_day = period(self.backend.clock(), P95_DAYS)
        stats = await self.stats.run_stats(first_day=first_day, last_day=last_day, job=job)
        self._p95[job] = (loop_now, stats.p95_ms)
        return stats.p95_ms

    # -- run ends (a finished hook) ------------------------------------------------------------------

    def run_finished(self, job: JobConfig, run: Run, state: JobState, before: int) -> None:
        """A run ended on this node (its end is committed; `before`: the failure streak before
        it). A failure that completes `pause_after_failures` has paused its job in that commit,
        and its notification was committed with it (jobd.notify.plan): the scheduler is told, as
        a pause through the API would."""
        if (
            run.status is RunStatus.FAILED
            and self.pause is not None
            and pauses(job.rules, before, state.consecutive_failures)
        ):
            self._send(self._pause(job, state.consecutive_failures))

    async def _pause(self, job: JobConfig, streak: int) -> None:
        assert self.pause is not None
        try:
            await self.pause(job.name)
        except Exception:
            self.log.exception("pause_after_failures_failed", job=job.name)
            return
        self.log.warning("job_paused_after_failures", job=job.name, consecutive_failures=streak)

    def _send(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _notify(self, job: JobConfig, event: str, run: Run | None, **fields: Any) -> None:
        try:
            await self.notifications.notify(job, event, run, **fields)
        except Exception:
            self.log.exception("notification_not_made", job=job.name, notify_event=event)


def current_pause_reason(job: JobConfig, state: JobState) -> str | None:
    """Why a paused job is paused, when it paused itself: its failure streak reached
    `pause_after_failures` (a resume or a success ends it); None otherwise."""
    limit = job.rules.pause_after_failures
    if not state.paused or limit is None or state.consecutive_failures < limit:
        return None
    return pause_reason(job.rules, state.consecutive_failures)


def _late_key(job: str, scheduled_for: int) -> str:
    return f"late:{job}:{scheduled_for}"
