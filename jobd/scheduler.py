"""The cron loop: asks for a run of each scheduled job when its time comes.

Storage and runs are someone else's business: the loop awaits a `fire` callback with a
`FireRequest` and the daemon applies the overlap policy. Time comes from a `Clock`.

Due fires sit in a heap keyed by instant, so a fire costs O(log n) whatever the number of
jobs. Pausing and reloading do not search the heap: each job remembers the sequence number
of its one live entry and any other entry is dropped when it reaches the top.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from jobd.catchup import missed_fires, newest_runnable, runnable_after
from jobd.clock import Clock
from jobd.config import JobConfig
from jobd.cronspec import CronSpec

_UTC = UTC


@dataclasses.dataclass(slots=True)
class FireRequest:
    """What the scheduler asks the daemon to do: start a run of `job`."""

    job: str
    scheduled_for: datetime  # the nominal fire time (aware UTC), without jitter
    catchup: bool
    overlap: str | None = None  # admit under this policy instead of the job's
    excluded_by: str | None = None  # the job's calendars or active period leave this fire out


@dataclasses.dataclass(slots=True)
class _Plan:
    config: JobConfig
    spec: CronSpec
    tz: ZoneInfo
    entry: int | None = None  # sequence number of the live heap entry
    next_fire: datetime | None = None  # its nominal time
    next_run: datetime | None = None  # the first fire from next_fire on that the job's window lets run


def _timing(config: JobConfig) -> tuple[Any, ...]:
    return (config.schedule, config.timezone, config.jitter_s, config.window)


def _aware_utc(when: datetime) -> datetime:
    # Stored times are UTC; a naive one is read as UTC rather than as local time.
    return when.replace(tzinfo=_UTC) if when.tzinfo is None else when.astimezone(_UTC)


class Scheduler:
    def __init__(
        self,
        jobs: Mapping[str, JobConfig],
        fire: Callable[[FireRequest], Awaitable[None]],
        *,
        clock: Clock,
        paused: Iterable[str] = (),
        last_fires: Mapping[str, datetime] = {},  # only read, so a shared default is safe
        rng: random.Random | None = None,
        max_sleep_s: float = 1.0,
        log: Any = None,
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._max_sleep_s = max_sleep_s
        self._log = log if log is not None else structlog.get_logger("jobd.scheduler")
        self._paused = set(paused)
        self._last = {job: _aware_utc(when) for job, when in last_fires.items()}
        self._plans: dict[str, _Plan] = {}
        # (due instant incl. jitter, sequence, job, nominal instant)
        self._heap: list[tuple[datetime, int, str, datetime]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        now = clock.now()
        for name, config in jobs.items():
            self._add_plan(name, config)
        self._catchup, upcoming = self._compute_catchup(now)
        self._pending_catchup = list(self._catchup)
        for name, plan in self._plans.items():
            if name in upcoming:
                self._push(plan, name, upcoming[name])
            elif name not in self._paused:
                self._schedule_from(name, now)

    # -- public API ---------------------------------------------------------------------

    def catch_up(self) -> list[FireRequest]:
        """The catch-up fires computed at construction; `run()` issues them first."""
        return [dataclasses.replace(request) for request in self._catchup]

    def next_run_at(self, job: str) -> datetime | None:
        """The nominal (unjittered) next fire that will run, in UTC: fires the job's calendars or
        active period exclude are passed over. None when paused, unscheduled, or when no fire
        will run (within catchup.SEARCH_HORIZON)."""
        plan = self._plans.get(job)
        if plan is None or job in self._paused or plan.next_fire is None:
            return None
        return plan.next_run

    def last_fire(self, job: str) -> datetime | None:
        return self._last.get(job)

    def pause(self, job: str) -> None:
        self._paused.add(job)
        plan = self._plans.get(job)
        if plan is not None:
            plan.entry = plan.next_fire = None
        self._wake.set()

    def resume(self, job: str) -> None:
        if job not in self._paused:
            return
        self._paused.discard(job)
        if job in self._plans:
            self._schedule_from(job, self._clock.now())
        self._wake.set()

    def reload(self, jobs: Mapping[str, JobConfig]) -> None:
        """Take a new job set. Jobs whose timing is unchanged keep their next fire."""
        now = self._clock.now()
        for name in [name for name in self._plans if name not in jobs]:
            del self._plans[name]
        for name, config in jobs.items():
            old = self._plans.get(name)
            if old is not None and config.schedule is not None and _timing(old.config) == _timing(config):
                old.config = config
                continue
            self._plans.pop(name, None)
            if self._add_plan(name, config) and name not in self._paused:
                self._schedule_from(name, now)
        self._wake.set()

    async def run(self) -> None:
        """Fire jobs until cancelled. Never returns otherwise; a failing fire is logged."""
        pending, self._pending_catchup = self._pending_catchup, []
        await self._issue_catchup(
            [request for request in pending if request.job in self._plans and request.job not in self._paused]
        )
        while True:
            self._wake.clear()
            await self._fire_due(self._clock.now())
            await self._sleep(*self._delay())

    # -- internals ----------------------------------------------------------------------

    def _add_plan(self, name: str, config: JobConfig) -> bool:
        if config.schedule is None:
            return False
        try:
            spec = CronSpec.parse(config.schedule, name)
            tz = ZoneInfo(config.timezone)
        except Exception as exc:  # config is validated earlier; a bad job must not stop the rest
            self._log.error("scheduler.job_unschedulable", job=name, error=str(exc))
            return False
        self._plans[name] = _Plan(config, spec, tz)
        return True

    def _schedule_from(self, name: str, now: datetime) -> None:
        """Schedule the first fire after `now`, and never at or before the last fire."""
        last = self._last.get(name)
        self._schedule_after(name, max(now, last) if last is not None else now)

    def _schedule_after(self, name: str, after: datetime) -> None:
        plan = self._plans[name]
        try:
            nominal = plan.spec.next_after(after, plan.tz).astimezone(_UTC)
        except ValueError as exc:
            self._log.error("scheduler.no_next_fire", job=name, error=str(exc))
            plan.entry = plan.next_fire = None
            return
        self._push(plan, name, nominal)

    def _push(self, plan: _Plan, name: str, nominal: datetime) -> None:
        window = plan.config.window
        if window is not None and window.reason(nominal) is not None and window.skip_forward(nominal) is None:
            # Past active_until: the schedule is over, so no more fires to count as skipped.
            self._log.info("scheduler.active_period_ended", job=name, next_fire=nominal.isoformat())
            plan.entry = plan.next_fire = plan.next_run = None
            return
        plan.next_run = self._next_run(plan, name, nominal)
        due = nominal
        if plan.config.jitter_s > 0:
            due += timedelta(seconds=self._rng.random() * plan.config.jitter_s)
        seq = next(self._seq)
        plan.entry, plan.next_fire = seq, nominal
        heapq.heappush(self._heap, (due, seq, name, nominal))
        if len(self._heap) > 2 * len(self._plans) + 64:
            self._compact()

    def _next_run(self, plan: _Plan, name: str, nominal: datetime) -> datetime | None:
        window = plan.config.window
        if window is None or window.reason(nominal) is None:
            return nominal
        if plan.next_run is not None and plan.next_run > nominal:
            return plan.next_run  # found from an earlier excluded fire: every fire between is excluded
        try:
            return runnable_after(plan.spec, plan.tz, window, nominal)
        except ValueError as exc:
            self._log.error("scheduler.no_next_fire", job=name, error=str(exc))
            return None

    def _live(self, name: str, seq: int) -> _Plan | None:
        plan = self._plans.get(name)
        return plan if plan is not None and plan.entry == seq else None

    def _compact(self) -> None:
        # Many pauses/reloads without fires leave dead entries behind; drop them in one pass.
        self._heap = [item for item in self._heap if self._live(item[2], item[1])]
        heapq.heapify(self._heap)

    def _delay(self) -> tuple[float | None, bool]:
        """Seconds until the earliest live fire, capped at max_sleep_s (None when idle), and
        whether that fire is due at the end of them."""
        while self._heap and self._live(self._heap[0][2], self._heap[0][1]) is None:
            heapq.heappop(self._heap)
        if not self._heap:
            return None, False
        wait = (self._heap[0][0] - self._clock.now()).total_seconds()
        if wait > self._max_sleep_s:
            return self._max_sleep_s, False
        return max(0.0, wait), True

    async def _fire_due(self, now: datetime) -> None:
        due: list[tuple[_Plan, str, datetime]] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, name, nominal = heapq.heappop(self._heap)
            plan = self._live(name, seq)
            if plan is None:
                continue
            plan.entry = plan.next_fire = None
            due.append((plan, name, nominal))
        await self._issue_all([self._request(plan, name, nominal) for plan, name, nominal in due])
        for plan, name, nominal in due:
            # The callback may have paused, removed or rescheduled the job meanwhile.
            if self._plans.get(name) is not plan or plan.entry is not None or name in self._paused:
                continue
            self._schedule_next(plan, name, nominal, now)

    def _schedule_next(self, plan: _Plan, name: str, nominal: datetime, now: datetime) -> None:
        # From the last scheduled time, not from now, so a slow fire does not shift the
        # schedule; but after a jump past several fires, go to the next future one.
        try:
            following = plan.spec.next_after(nominal, plan.tz).astimezone(_UTC)
        except ValueError as exc:
            self._log.error("scheduler.no_next_fire", job=name, error=str(exc))
            return
        if following <= now - timedelta(seconds=plan.config.jitter_s):
            self._log.warning(
                "scheduler.fires_skipped", job=name, first_skipped=following.isoformat(), now=now.isoformat()
            )
            self._schedule_after(name, now)
        else:
            self._push(plan, name, following)

    def _request(self, plan: _Plan, name: str, nominal: datetime) -> FireRequest:
        window = plan.config.window
        excluded_by = window.reason(nominal) if window is not None else None
        return FireRequest(name, nominal, catchup=False, excluded_by=excluded_by)

    async def _issue_all(self, requests: list[FireRequest]) -> None:
        """Fires due at the same time go out together (in order), not one after the other: each
        waits for its run's commit, and together they share one group commit."""
        if len(requests) == 1:
            await self._issue(requests[0])
        elif requests:
            await asyncio.gather(*(self._issue(request) for request in requests))

    async def _issue_catchup(self, requests: list[FireRequest]) -> None:
        """Jobs catch up side by side; one job's missed fires go one after the other, oldest
        first, each committed with the job's last fire before the next is made: a restart in
        the middle carries on after the newest one made and makes none twice."""
        by_job: dict[str, list[FireRequest]] = {}
        for request in requests:
            by_job.setdefault(request.job, []).append(request)

        async def one_job(fires: list[FireRequest]) -> None:
            for request in fires:
                await self._issue(request)

        await asyncio.gather(*(one_job(fires) for fires in by_job.values()))

    async def _issue(self, request: FireRequest) -> None:
        try:
            await self._fire(request)
        except Exception:
            self._log.exception(
                "scheduler.fire_failed", job=request.job, scheduled_for=request.scheduled_for.isoformat()
            )
        self._last[request.job] = request.scheduled_for

    async def _sleep(self, delay: float | None, exact: bool = False) -> None:
        """Sleep for `delay` (None: until woken), returning early when woken."""
        if self._wake.is_set():
            return
        if delay == 0:
            await asyncio.sleep(0)
            return
        tasks: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
        if delay is not None:
            tasks.add(asyncio.ensure_future(self._clock.sleep(delay, exact=exact)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _compute_catchup(self, now: datetime) -> tuple[list[FireRequest], dict[str, datetime]]:
        """The catch-up fires; and the next fire of each job that missed none, found on the way
        (the first fire after its last is still to come), which spares start-up a second search."""
        requests = []
        upcoming: dict[str, datetime] = {}
        for name, plan in self._plans.items():
            last = self._last.get(name)
            if last is None or name in self._paused or last >= now:
                continue
            first = plan.spec.next_after(last, plan.tz).astimezone(_UTC)
            if first > now:
                upcoming[name] = first
                continue
            # Missed fires the job's window excludes are neither run nor counted as skipped.
            newest = newest_runnable(plan.spec, plan.tz, plan.config.window, last, now)
            if newest is None:
                continue
            age = (now - newest).total_seconds()
            if plan.config.misfire == "run_once" and age <= plan.config.misfire_grace_s:
                requests.append(FireRequest(name, newest, catchup=True))
            elif plan.config.misfire == "run_all" and age <= plan.config.misfire_grace_s:
                requests.extend(self._run_all(name, plan, last, now))
            else:
                self._log.info(
                    "scheduler.misfire_skipped",
                    job=name,
                    newest_missed=newest.isoformat(),
                    age_s=round(age, 3),
                    policy=plan.config.misfire,
                )
        return requests, upcoming

    def _run_all(self, name: str, plan: _Plan, last: datetime, now: datetime) -> list[FireRequest]:
        """misfire = "run_all": a run for each of the newest max_catchup_runs missed fires. They
        are admitted whatever the overlap policy (else the first would skip the others) and wait
        for the job's slots in order."""
        missed = missed_fires(plan.spec, plan.tz, last, now, plan.config.max_catchup_runs, plan.config.window)
        if missed.left_out:
            self._log.warning(
                "scheduler.catchup_limited",
                job=name,
                left_out=missed.left_out,
                left_out_at_least=missed.left_out_capped,
                first_left_out=missed.first_left_out.isoformat() if missed.first_left_out else None,
                max_catchup_runs=plan.config.max_catchup_runs,
            )
        return [FireRequest(name, fire, catchup=True, overlap="allow") for fire in missed.run]
