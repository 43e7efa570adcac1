"""Run statistics over a period of whole UTC days, read from the rollups of migrations 2 and 3.

Finished runs come from the rollups, active runs from `runs` itself (there are few of them), so
the cost follows the number of jobs and days, not of runs:

- the totals and the timeline from `run_days_all` (all jobs together: a few rows per day);
- one job's figures from its `run_days` rows, one index seek per day;
- every job's figures from `run_days` over the period, or, when the period holds most of the
  history (the usual case: statistics over the retention period), from `run_totals` less the
  `run_days` rows outside it, whichever reads less;
- p95 walks a duration index down from the longest run, ~5 % of the period's runs, instead of
  sorting them all; for every job at once in a few statements, one per distinct rank.

Everything is read inside one transaction, so the figures agree with each other.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from typing import Any

from jobd.models import DAY_MS, RunStatus, TriggerSource
from jobd.store.base import JobStats, RunStats

ACTIVE = "'PENDING', 'PROCESSING'"


_STATUSES = list(RunStatus)
_SOURCES = list(TriggerSource)
_STATUS_INDEX = {status.value: index for index, status in enumerate(_STATUSES)}
_SOURCE_INDEX = {source.value: index for index, source in enumerate(_SOURCES)}
_OK = frozenset({RunStatus.COMPLETED.value, RunStatus.PARTIAL.value})
_FAILED = RunStatus.FAILED.value
_BY_STATUS = ", ".join(f"SUM(CASE WHEN status = '{s.value}' THEN runs ELSE 0 END)" for s in _STATUSES)
# job, runs by status (in _STATUSES order), timed, duration_sum
_PER_JOB = f"SELECT job, {_BY_STATUS}, SUM(timed), SUM(duration_sum) FROM "
_P95_OF_JOBS = (
    "SELECT jobs.value, (SELECT duration_ms FROM runs INDEXED BY runs_job_duration WHERE job = jobs.value "
    "AND duration_ms IS NOT NULL AND created_at >= :since AND created_at < :until "
    "ORDER BY duration_ms DESC LIMIT 1 OFFSET :skip) FROM json_each(:jobs) AS jobs"
)


def p95_rank(n: int) -> int:
    """The nearest rank of the 95th percentile among n values (1 = the smallest)."""
    return (95 * n + 99) // 100


def _p95(db: sqlite3.Connection, timed: int, args: dict[str, Any], job: str | None) -> int | None:
    if timed <= 0:
        return None
    from_top = timed - p95_rank(timed)
    if job is None:
        sql = (
            "SELECT duration_ms FROM runs INDEXED BY runs_duration WHERE duration_ms IS NOT NULL "
            "AND created_at >= :since AND created_at < :until ORDER BY duration_ms DESC LIMIT 1 OFFSET :skip"
        )
    else:
        sql = (
            "SELECT duration_ms FROM runs INDEXED BY runs_job_duration WHERE job = :job "
            "AND duration_ms IS NOT NULL AND created_at >= :since AND created_at < :until "
            "ORDER BY duration_ms DESC LIMIT 1 OFFSET :skip"
        )
    row = db.execute(sql, {**args, "job": job, "skip": from_top}).fetchone()
    return None if row is None else int(row[0])


def _jobs_p95(db: sqlite3.Connection, jobs: dict[str, JobStats], args: dict[str, Any]) -> None:
    """Every job's p95: one statement per distinct rank from the top (a handful), not one per job."""
    by_skip: dict[int, list[str]] = defaultdict(list)
    for name, stats in jobs.items():
        if stats.timed > 0:
            by_skip[stats.timed - p95_rank(stats.timed)].append(name)
    for skip, names in by_skip.items():
        for name, value in db.execute(_P95_OF_JOBS, {**args, "skip": skip, "jobs": json.dumps(names)}):
            jobs[name].p95_ms = None if value is None else int(value)


def _per_job(db: sqlite3.Connection, args: dict[str, Any], inside: int, outside: int) -> dict[str, JobStats]:
    """The finished runs of each job in the period: read from the smaller side of the history."""
    jobs: dict[str, JobStats] = {}
    if inside <= outside:
        for name, *counts, timed, duration in db.execute(
            _PER_JOB + "run_days WHERE day BETWEEN :first AND :last GROUP BY job", args
        ):
            jobs[name] = JobStats(dict(zip(_STATUSES, counts)), timed, duration)
        return jobs
    totals = db.execute(_PER_JOB + "run_totals GROUP BY job").fetchall()
    before_or_after = {
        row[0]: row[1:]
        for row in db.execute(_PER_JOB + "run_days WHERE day < :first OR day > :last GROUP BY job", args)
    }
    width = len(_STATUSES) + 2
    for name, *row in totals:
        less = before_or_after.get(name, (0,) * width)
        *counts, timed, duration = (a - b for a, b in zip(row, less))
        if timed or any(counts):
            jobs[name] = JobStats(dict(zip(_STATUSES, counts)), timed, duration)
    return jobs


def read_run_stats(db: sqlite3.Connection, first_day: int, last_day: int, job: str | None) -> RunStats:
    """Blocking: meant for the reader's thread. `db` is in autocommit mode (no transaction open)."""
    args = {
        "first": first_day,
        "last": last_day,
        "since": first_day * DAY_MS,
        "until": (last_day + 1) * DAY_MS,
        "job": job,
    }
    of_job = " AND job = :job" if job is not None else ""
    by_status = [0] * len(_STATUSES)
    by_trigger = [0] * len(_SOURCES)
    days: dict[int, list[int]] = {}
    jobs: dict[str, JobStats] = {}
    timed = duration_sum = 0
    db.execute("BEGIN")  # one snapshot for every query below
    try:
        if job is None:
            rows = db.execute(
                "SELECT day, status, triggered_by, runs, timed, duration_sum FROM run_days_all "
                "WHERE day BETWEEN :first AND :last",
                args,
            )
        else:
            args["days"] = json.dumps(list(range(first_day, last_day + 1)))
            rows = db.execute(
                "SELECT day, status, triggered_by, runs, timed, duration_sum FROM run_days "
                "WHERE day IN (SELECT value FROM json_each(:days)) AND job = :job",
                args,
            )
        for day, status, source, runs, n_timed, n_sum in rows:
            by_status[_STATUS_INDEX[status]] += runs
            by_trigger[_SOURCE_INDEX[source]] += runs
            timed += n_timed
            duration_sum += n_sum
            totals = days.setdefault(day, [0, 0, 0])
            totals[0] += runs
            totals[1] += runs if status in _OK else 0
            totals[2] += runs if status == _FAILED else 0
        if job is None:
            inside = sum(by_status)
            everything = db.execute("SELECT COALESCE(SUM(runs), 0) FROM run_days_all").fetchone()[0]
            jobs = _per_job(db, args, inside, everything - inside)
        # Active runs: by status, as by job SQLite would walk every run the job ever had. They have
        # no duration yet.
        for day, name, status, source in db.execute(
            f"SELECT created_at / {DAY_MS}, job, status, triggered_by FROM runs INDEXED BY runs_status "
            f"WHERE status IN ({ACTIVE}) AND created_at >= :since AND created_at < :until{of_job}",
            args,
        ):
            by_status[_STATUS_INDEX[status]] += 1
            by_trigger[_SOURCE_INDEX[source]] += 1
            days.setdefault(day, [0, 0, 0])[0] += 1
            if job is None:
                jobs.setdefault(name, JobStats({s: 0 for s in RunStatus})).by_status[RunStatus(status)] += 1
        _jobs_p95(db, jobs, args)
        p95 = _p95(db, timed, args, job)
    finally:
        db.execute("COMMIT")  # a read: ending it either way only lets go of the snapshot
    return RunStats(
        first_day=first_day,
        last_day=last_day,
        by_status=dict(zip(_STATUSES, by_status)),
        by_trigger=dict(zip(_SOURCES, by_trigger)),
        timed=timed,
        duration_sum_ms=duration_sum,
        p95_ms=p95,
        days={day: (runs, completed, failed) for day, (runs, completed, failed) in days.items()},
        jobs=jobs,
    )
