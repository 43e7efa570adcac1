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

from jobd.models import RunStatus, TriggerSource
from jobd.store.base import JobStats, RunStats
from jobd.store.migrations import DAY_MS

ACTIVE = "'PENDING', 'PROCESSING'"


def p95_rank(n: int) -> int:
    """The nearest rank of the 95th percentile among n values (1 = the smallest)."""
    return (95 * n + 99) // 100


def _buckets(job: str | None) -> str:
    """Per (day, job, status, trigger): finished runs from the rollup, then active runs one by one."""
    of_job = " AND job = :job" if job is not None else ""
    return (
        "WITH buckets AS ("
        "SELECT day, job, status, triggered_by, runs, timed, duration_sum FROM run_days "
        f"WHERE day BETWEEN :first AND :last{of_job} "
        "UNION ALL "
        f"SELECT created_at / {DAY_MS}, job, status, triggered_by, 1, duration_ms IS NOT NULL, "
        f"COALESCE(duration_ms, 0) FROM runs WHERE status IN ({ACTIVE}) "
        f"AND created_at >= :since AND created_at < :until{of_job}) "
    )


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
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("BEGIN")
        buckets = _buckets(job)
        by_status = {status: 0 for status in RunStatus}
        by_trigger = {source: 0 for source in TriggerSource}
        timed = duration_sum = 0
        for status, source, runs, n_timed, n_sum in db.execute(
            f"{buckets} SELECT status, triggered_by, SUM(runs), SUM(timed), SUM(duration_sum) "
            "FROM buckets GROUP BY status, triggered_by", args
        ):
            by_status[RunStatus(status)] += runs
            by_trigger[TriggerSource(source)] += runs
            timed += n_timed
            duration_sum += n_sum
        days = {
            day: (runs, completed, failed)
            for day, runs, completed, failed in db.execute(
                f"{buckets} SELECT day, SUM(runs), "
                "SUM(CASE WHEN status IN ('COMPLETED', 'PARTIAL') THEN runs ELSE 0 END), "
                "SUM(CASE WHEN status = 'FAILED' THEN runs ELSE 0 END) FROM buckets GROUP BY day", args
            )
        }
        jobs: dict[str, JobStats] = {}
        if job is None:
            for name, status, runs, n_timed, n_sum in db.execute(
                f"{buckets} SELECT job, status, SUM(runs), SUM(timed), SUM(duration_sum) "
                "FROM buckets GROUP BY job, status", args
            ):
                stats = jobs.setdefault(name, JobStats({s: 0 for s in RunStatus}))
                stats.by_status[RunStatus(status)] += runs
                stats.timed += n_timed
                stats.duration_sum_ms += n_sum
            for name, stats in jobs.items():
                stats.p95_ms = _p95(db, stats.timed, args, name)
        p95 = _p95(db, timed, args, job)
        db.execute("COMMIT")
    finally:
        db.close()
    return RunStats(first_day=first_day, last_day=last_day, by_status=by_status, by_trigger=by_trigger,
                    timed=timed, duration_sum_ms=duration_sum, p95_ms=p95, days=days, jobs=jobs)
