"""What the queue and the statistics show a token limited to some jobs: the same answers, counted
over its jobs only. (The unlimited answers come from totals kept for every job at once; these are
counted from the active runs and the store's per-job figures instead.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from jobd.models import RunStatus
from jobd.store import RunFilter
from jobd.store.base import JobStats, RunStats

if TYPE_CHECKING:
    from jobd.app import Daemon

_FINISHED = tuple(status for status in RunStatus if status.terminal)


async def queue(daemon: Daemon, jobs: tuple[str, ...]) -> dict[str, Any]:
    """GET /api/v1/queue for these jobs. `workers` stays the daemon's: they are shared by every job."""
    allowed = set(jobs)
    active = [run for run in daemon.runs.active.values() if run.job in allowed]
    pending = [run for run in active if run.status is RunStatus.PENDING]
    processing = sum(1 for run in active if run.status is RunStatus.PROCESSING)
    finished = await asyncio.gather(
        *(daemon.store.summarize_runs(RunFilter(jobs=jobs, status=(status,))) for status in _FINISHED)
    )
    counts = {status.value: 0 for status in RunStatus}
    counts[RunStatus.PENDING.value] = len(pending)
    counts[RunStatus.PROCESSING.value] = processing
    for status, summary in zip(_FINISHED, finished, strict=True):
        counts[status.value] = int(summary["runs"])
    full = daemon.runs.queue_snapshot(daemon.pool.concurrency)
    oldest = min((run.created_at for run in pending), default=None)
    return {
        "counts": counts,
        "pending": len(pending),
        "processing": processing,
        "workers": full["workers"],
        "oldest_pending_age_s": None if oldest is None else round((daemon.runs.clock() - oldest) / 1000, 3),
    }


async def run_stats(daemon: Daemon, jobs: tuple[str, ...], first_day: int, last_day: int) -> RunStats:
    """RunStats over these jobs: each job's, added up. The p95 of several jobs cannot be added up:
    it is given only when one of them has timed runs (each job's own is in the breakdown)."""
    each = await asyncio.gather(
        *(daemon.store.run_stats(first_day=first_day, last_day=last_day, job=job) for job in jobs)
    )
    by_status: Counter[RunStatus] = Counter({status: 0 for status in RunStatus})
    by_trigger: Counter[Any] = Counter()
    days: dict[int, tuple[int, int, int]] = {}
    breakdown: dict[str, JobStats] = {}
    timed = duration_sum = 0
    for job, stats in zip(jobs, each, strict=True):
        by_status.update(stats.by_status)
        by_trigger.update(stats.by_trigger)
        timed += stats.timed
        duration_sum += stats.duration_sum_ms
        for day, figures in stats.days.items():
            before = days.get(day, (0, 0, 0))
            days[day] = (before[0] + figures[0], before[1] + figures[1], before[2] + figures[2])
        if stats.total:
            breakdown[job] = JobStats(dict(stats.by_status), stats.timed, stats.duration_sum_ms, stats.p95_ms)
    timed_jobs = [stats for stats in each if stats.timed]
    return RunStats(
        first_day=first_day,
        last_day=last_day,
        by_status=dict(by_status),
        by_trigger=dict(by_trigger),
        timed=timed,
        duration_sum_ms=duration_sum,
        p95_ms=timed_jobs[0].p95_ms if len(timed_jobs) == 1 else None,
        days=days,
        jobs=breakdown,
    )
