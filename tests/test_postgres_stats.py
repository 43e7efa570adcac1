"""Run statistics on PostgreSQL: the same figures as the SQLite store's for the same generated
history, and as figures computed here from the run objects themselves."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pgstores import Pair, open_pair
from rungen import generate_runs

from jobd.models import Run, RunStatus, TriggerSource
from jobd.store.base import JobStats, RunStats
from jobd.store.migrations import DAY_MS

NOW = 1_790_000_000_000 + 13 * 3600 * 1000  # a fixed afternoon
TODAY = NOW // DAY_MS
JOBS = ("alpha", "beta", "gamma", "delta", "epsilon")


@pytest.fixture
async def pair(tmp_path: Path, pg_db: str) -> AsyncIterator[Pair]:
    async for both in open_pair(tmp_path, pg_db):
        yield both


def p95(durations: list[int]) -> int | None:
    if not durations:
        return None
    return sorted(durations)[math.ceil(len(durations) * 95 / 100) - 1]


def expected(runs: Sequence[Run], first_day: int, last_day: int, job: str | None = None) -> dict[str, Any]:
    chosen = [r for r in runs if first_day <= r.created_at // DAY_MS <= last_day and job in (None, r.job)]
    durations = [r.duration_ms for r in chosen if r.duration_ms is not None]
    days: Counter[int] = Counter()
    completed: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for r in chosen:
        day = r.created_at // DAY_MS
        days[day] += 1
        completed[day] += r.status in (RunStatus.COMPLETED, RunStatus.PARTIAL)
        failed[day] += r.status is RunStatus.FAILED
    return {
        "by_status": {s: sum(r.status is s for r in chosen) for s in RunStatus},
        "by_trigger": {t: sum(r.triggered_by is t for r in chosen) for t in TriggerSource},
        "timed": len(durations),
        "duration_sum": sum(durations),
        "p95": p95(durations),
        "days": {day: (days[day], completed[day], failed[day]) for day in days},
        "jobs": {r.job for r in chosen},
    }


def check(stats: RunStats, runs: Sequence[Run], job: str | None = None) -> None:
    want = expected(runs, stats.first_day, stats.last_day, job)
    assert stats.by_status == want["by_status"]
    assert stats.by_trigger == want["by_trigger"]
    assert (stats.timed, stats.duration_sum_ms, stats.p95_ms) == (want["timed"], want["duration_sum"], want["p95"])
    assert stats.days == want["days"]
    if job is not None:
        assert stats.jobs == {}
        return
    assert set(stats.jobs) == want["jobs"]
    for name, of_job in stats.jobs.items():
        mine = expected(runs, stats.first_day, stats.last_day, name)
        assert of_job == JobStats(mine["by_status"], mine["timed"], mine["duration_sum"], mine["p95"]), name


PERIODS = ((TODAY - 29, TODAY), (TODAY - 59, TODAY), (TODAY - 50, TODAY - 2), (TODAY - 3, TODAY - 3))


async def test_run_stats_match_sqlite_and_the_generated_history(pair: Pair) -> None:
    runs = generate_runs(6000, now_ms=NOW, days=60, jobs=JOBS, seed=7)
    await pair.load(runs)
    for first, last in PERIODS:
        stats = await pair.postgres.run_stats(first_day=first, last_day=last)
        assert stats == await pair.sqlite.run_stats(first_day=first, last_day=last), (first, last)
        check(stats, runs)
        for job in ("beta", "epsilon"):
            one = await pair.postgres.run_stats(first_day=first, last_day=last, job=job)
            assert one == await pair.sqlite.run_stats(first_day=first, last_day=last, job=job), (first, last, job)
            check(one, runs, job)
    assert (await pair.postgres.run_stats(first_day=TODAY - 29, last_day=TODAY)).total > 2500


async def test_p95_is_the_nearest_rank_for_every_count(pair: Pair) -> None:
    """percentile_disc against ceil(0.95 n) for n = 1 .. 60: one job per n, one run per day
    and duration, so each job's p95 is a value of its own."""
    runs = []
    for n in range(1, 61):
        for k in range(n):
            at = NOW - (k % 5) * DAY_MS - k
            run = Run(id=0, job=f"n{n:02}", status=RunStatus.COMPLETED, triggered_by=TriggerSource.API, created_at=at)
            run.started_at, run.finished_at = at, at + (k * 37) % (n + 3)
            runs.append(run)
    runs.sort(key=lambda run: run.created_at)
    await pair.load(runs)
    stats = await pair.postgres.run_stats(first_day=TODAY - 6, last_day=TODAY)
    assert stats == await pair.sqlite.run_stats(first_day=TODAY - 6, last_day=TODAY)
    check(stats, runs)
    assert len(stats.jobs) == 60


async def test_a_period_without_runs_and_active_runs(pair: Pair) -> None:
    runs = generate_runs(300, now_ms=NOW, days=5, jobs=JOBS, seed=4)
    for run in runs[:20]:  # a job with only active runs: counted, untimed
        run.job, run.status, run.finished_at = "busy", RunStatus.PROCESSING, None
    await pair.load(runs)
    empty = await pair.postgres.run_stats(first_day=TODAY + 10, last_day=TODAY + 20)
    assert empty == await pair.sqlite.run_stats(first_day=TODAY + 10, last_day=TODAY + 20)
    assert (empty.total, empty.p95_ms, empty.days, empty.jobs, empty.timed) == (0, None, {}, {}, 0)
    none = await pair.postgres.run_stats(first_day=TODAY - 4, last_day=TODAY, job="nobody")
    assert none == await pair.sqlite.run_stats(first_day=TODAY - 4, last_day=TODAY, job="nobody")
    stats = await pair.postgres.run_stats(first_day=TODAY - 6, last_day=TODAY)
    assert stats == await pair.sqlite.run_stats(first_day=TODAY - 6, last_day=TODAY)
    check(stats, runs)
    assert stats.jobs["busy"].timed == 0 and stats.jobs["busy"].p95_ms is None
