"""Run statistics on PostgreSQL, read straight from `runs` (no rollup tables to keep in step
across nodes): two aggregates over the period's rows, found through the created_at index,
inside one REPEATABLE READ transaction so that the figures agree with each other.

p95 is percentile_disc(0.95), which is the nearest rank: the ceil(0.95 n)-th smallest value,
as in the SQLite store.
"""

from __future__ import annotations

from typing import Any

from psycopg import IsolationLevel

from jobd.models import DAY_MS, RunStatus, TriggerSource
from jobd.store.base import JobStats, RunStats
from jobd.store.postgres.runs import Conn

_STATUSES = list(RunStatus)
_SOURCES = list(TriggerSource)
_OK = frozenset({RunStatus.COMPLETED, RunStatus.PARTIAL})
_PERIOD = "created_at >= %(since)s AND created_at < %(until)s"
_OF_JOB = " AND job = %(job)s"
# day, status, trigger: runs, timed runs, their duration
_BY_DAY = (
    f"SELECT created_at / {DAY_MS}, status, triggered_by, count(*), count(duration_ms), "
    "COALESCE(sum(duration_ms), 0)::bigint FROM runs WHERE {where} GROUP BY 1, 2, 3"
)
_COUNT_STATUSES = ", ".join(f"count(*) FILTER (WHERE status = '{s.value}')" for s in _STATUSES)
# job and whether the row is the whole period's (1) rather than that job's, runs by status, timed, duration sum, p95
_BY_JOB = (
    "SELECT {key}, "
    f"{_COUNT_STATUSES}, count(duration_ms), COALESCE(sum(duration_ms), 0)::bigint, "
    "percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM runs WHERE {where}{groups}"
)


def _job_stats(row: tuple[Any, ...]) -> JobStats:
    counts = row[2 : 2 + len(_STATUSES)]
    timed, duration_sum, p95 = row[2 + len(_STATUSES) :]
    return JobStats(
        dict(zip(_STATUSES, (int(n) for n in counts))),
        int(timed),
        int(duration_sum),
        None if p95 is None else int(p95),
    )


async def read_run_stats(conn: Conn, first_day: int, last_day: int, job: str | None) -> RunStats:
    """`conn` is an autocommit connection of the pool; the reads share one snapshot."""
    args = {"since": first_day * DAY_MS, "until": (last_day + 1) * DAY_MS, "job": job}
    where = _PERIOD + (_OF_JOB if job is not None else "")
    # Every job and the whole period in one pass when no job is asked for; only the period otherwise.
    if job is None:
        key, groups = "job, grouping(job)", " GROUP BY GROUPING SETS ((job), ())"
    else:
        key, groups = "NULL, 1", ""
    previous = conn.isolation_level
    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
    try:
        async with conn.transaction(), conn.pipeline():
            by_day = await conn.execute(_BY_DAY.format(where=where), args)
            by_job = await conn.execute(_BY_JOB.format(key=key, where=where, groups=groups), args)
            day_rows = await by_day.fetchall()
            job_rows = await by_job.fetchall()
    finally:
        await conn.set_isolation_level(previous)
    by_status = dict.fromkeys(_STATUSES, 0)
    by_trigger = dict.fromkeys(_SOURCES, 0)
    days: dict[int, tuple[int, int, int]] = {}
    for day, status_value, source, runs, _timed, _sum in day_rows:
        status = RunStatus(status_value)
        by_status[status] += runs
        by_trigger[TriggerSource(source)] += runs
        total, ok, failed = days.get(int(day), (0, 0, 0))
        days[int(day)] = (
            total + runs,
            ok + (runs if status in _OK else 0),
            failed + (runs if status is RunStatus.FAILED else 0),
        )
    jobs: dict[str, JobStats] = {}
    whole = JobStats(dict.fromkeys(_STATUSES, 0))
    for row in job_rows:
        if row[1]:  # the grouping set () : the period as a whole
            whole = _job_stats(row)
        else:
            jobs[str(row[0])] = _job_stats(row)
    return RunStats(
        first_day=first_day,
        last_day=last_day,
        by_status=by_status,
        by_trigger=by_trigger,
        timed=whole.timed,
        duration_sum_ms=whole.duration_sum_ms,
        p95_ms=whole.p95_ms,
        days=days,
        jobs=jobs,
    )
