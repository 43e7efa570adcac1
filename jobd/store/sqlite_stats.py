"""Run statistics over a period of whole UTC days, read from the rollups of migration 2.

Finished runs come from `run_days` (a few rows per job and day), active runs from `runs` itself
(there are few of them), so the cost follows the number of jobs and days, not of runs. The p95 of
durations walks a duration index down from the longest run, ~5 % of the period's runs, instead of
sorting them all. Everything is read inside one transaction, so the figures agree with each other.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from jobd.models import DAY_MS, RunStatus, TriggerSource
from jobd.store.base import JobStats, RunStats

ACTIVE = "'PENDING', 'PROCESSING'"


_STATUSES = list(RunStatus)
_SOURCES = list(TriggerSource)
_COMPLETED, _PARTIAL, _FAILED = (_STATUSES.index(s) for s in (RunStatus.COMPLETED, RunStatus.PARTIAL,
                                                               RunStatus.FAILED))
# One pass over run_days in its key order (day, job, ...), so SQLite groups without sorting.
_BY_DAY_AND_JOB = (
    "SELECT day, job, "
    + ", ".join(f"SUM(CASE WHEN status = '{s.value}' THEN runs ELSE 0 END)" for s in _STATUSES) + ", "
    + ", ".join(f"SUM(CASE WHEN triggered_by = '{t.value}' THEN runs ELSE 0 END)" for t in _SOURCES)
    + ", SUM(timed), SUM(duration_sum) FROM run_days"
)


def p95_rank(n: int) -> int:
    """The nearest rank of the 95th percentile among n values (1 = the smallest)."""
    return (95 * n + 99) // 100


def _p95(db: sqlite3.Connection, timed: int, args: dict[str, Any], job: str | None) -> int | None:
    if timed <= 0:
        return None
    from_top = timed - p95_rank(timed)
    if job is None:
        sql = ("SELECT duration_ms FROM runs INDEXED BY runs_duration WHERE duration_ms IS NOT NULL "
               "AND created_at >= :since AND created_at < :until ORDER BY duration_ms DESC LIMIT 1 OFFSET :skip")
    else:
        sql = ("SELECT duration_ms FROM runs INDEXED BY runs_job_duration WHERE job = :job "
               "AND duration_ms IS NOT NULL AND created_at >= :since AND created_at < :until "
               "ORDER BY duration_ms DESC LIMIT 1 OFFSET :skip")
    row = db.execute(sql, {**args, "job": job, "skip": from_top}).fetchone()
    return None if row is None else int(row[0])


def read_run_stats(path: Path, first_day: int, last_day: int, job: str | None) -> RunStats:
    """Blocking: meant for a worker thread. Opens a read-only connection of its own."""
    args = {"first": first_day, "last": last_day, "since": first_day * DAY_MS,
            "until": (last_day + 1) * DAY_MS, "job": job}
    of_job = " AND job = :job" if job is not None else ""
    by_status = {status: 0 for status in RunStatus}
    by_trigger = {source: 0 for source in TriggerSource}
    days: dict[int, list[int]] = {}
    jobs: dict[str, JobStats] = {}
    timed = duration_sum = 0
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("BEGIN")  # one snapshot for every query below
        for day, name, *counts in db.execute(_BY_DAY_AND_JOB + f" WHERE day BETWEEN :first AND :last{of_job} "
                                              "GROUP BY day, job", args):
            statuses, sources = counts[:len(_STATUSES)], counts[len(_STATUSES):-2]
            n_timed, n_sum = counts[-2:]
            runs = sum(statuses)
            for status, n in zip(_STATUSES, statuses):
                by_status[status] += n
            for source, n in zip(_SOURCES, sources):
                by_trigger[source] += n
            timed += n_timed
            duration_sum += n_sum
            totals = days.setdefault(day, [0, 0, 0])
            totals[0] += runs
            totals[1] += statuses[_COMPLETED] + statuses[_PARTIAL]
            totals[2] += statuses[_FAILED]
            if job is None:
                stats = jobs.setdefault(name, JobStats({s: 0 for s in RunStatus}))
                for status, n in zip(_STATUSES, statuses):
                    stats.by_status[status] += n
                stats.timed += n_timed
                stats.duration_sum_ms += n_sum
        # Active runs: by status, as by job SQLite would walk every run the job ever had. They have
        # no duration yet.
        for day, name, status, source in db.execute(
            f"SELECT created_at / {DAY_MS}, job, status, triggered_by FROM runs INDEXED BY runs_status "
            f"WHERE status IN ({ACTIVE}) AND created_at >= :since AND created_at < :until{of_job}", args
        ):
            by_status[RunStatus(status)] += 1
            by_trigger[TriggerSource(source)] += 1
            days.setdefault(day, [0, 0, 0])[0] += 1
            if job is None:
                jobs.setdefault(name, JobStats({s: 0 for s in RunStatus})).by_status[RunStatus(status)] += 1
        for name, stats in jobs.items():
            stats.p95_ms = _p95(db, stats.timed, args, name)
        p95 = _p95(db, timed, args, job)
        db.execute("COMMIT")
    finally:
        db.close()
    return RunStats(first_day=first_day, last_day=last_day, by_status=by_status, by_trigger=by_trigger,
                    timed=timed, duration_sum_ms=duration_sum, p95_ms=p95,
                    days={day: (runs, completed, failed) for day, (runs, completed, failed) in days.items()},
                    jobs=jobs)
