"""The SQLite store's reads: every query runs on the reader's connection thread, beside the
writer's, so a long read (a month's statistics) never holds up a commit."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from jobd.models import Run, RunStatus
from jobd.store.base import RUN_COLUMNS, JobState, RunFilter, RunStats, row_to_run, summary_of
from jobd.store.sqlite_rows import rollup_answers, where_clause
from jobd.store.sqlite_stats import ACTIVE, read_run_stats
from jobd.store.sqlite_thread import ConnectionThread


class SQLiteReads:
    """The read half of SQLiteStore (the StoreReads protocol)."""

    _reader: ConnectionThread | None  # None until the store is open

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        assert self._reader is not None
        return await self._reader.fetchall(sql, args)

    async def get_run(self, run_id: int) -> Run | None:
        rows = await self._fetchall(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        return row_to_run(rows[0]) if rows else None

    async def get_runs(self, run_ids: Sequence[int]) -> list[Run]:
        runs: list[Run] = []
        ids = list(run_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._fetchall(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            )
            runs.extend(row_to_run(row) for row in rows)
        return runs

    async def list_runs(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        """A page of runs, newest first, and how many runs match (the cursor, before_id, aside)."""
        clause, args = where_clause(where)
        rows = await self._fetchall(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        unpaged = dataclasses.replace(where, before_id=None)
        if rollup_answers(unpaged):
            total = (await self._rollup_summary(unpaged))["runs"]
        else:
            clause, args = where_clause(unpaged)
            total = int((await self._fetchall(f"SELECT COUNT(*) FROM runs{clause}", args))[0][0])
        return [row_to_run(row) for row in rows], total

    async def summarize_runs(self, where: RunFilter) -> dict[str, Any]:
        if rollup_answers(where) and where.before_id is None:
            return await self._rollup_summary(where)
        clause, args = where_clause(where)
        rows = await self._fetchall(
            "SELECT COUNT(*), "
            "SUM(CASE WHEN status IN ('COMPLETED', 'PARTIAL') THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END), "
            "SUM(counts_total), SUM(counts_success), SUM(counts_failed), SUM(counts_skipped), "
            f"COUNT(duration_ms), SUM(duration_ms) FROM runs{clause}",
            args,
        )
        return summary_of(rows[0])

    async def _rollup_summary(self, where: RunFilter) -> dict[str, Any]:
        """Finished runs from a rollup (one job's from run_totals, every job's from run_days_all, a few
        rows a day), active ones from runs, read in one statement (one snapshot). Active runs are
        found by status: by job, SQLite would walk every run the job ever had."""
        rollup = "run_totals" if where.job is not None or where.jobs is not None else "run_days_all"
        finished, args = where_clause(
            RunFilter(job=where.job, jobs=where.jobs, status=where.status, triggered_by=where.triggered_by)
        )
        statuses = tuple(
            status for status in (RunStatus.PENDING, RunStatus.PROCESSING) if not where.status or status in where.status
        )
        active, active_args = where_clause(
            RunFilter(job=where.job, jobs=where.jobs, status=statuses, triggered_by=where.triggered_by)
        )
        active_rows = (
            (
                " UNION ALL SELECT status, 1, duration_ms IS NOT NULL, COALESCE(duration_ms, 0), "
                "COALESCE(counts_total, 0), counts_success, counts_failed, counts_skipped "
                f"FROM runs INDEXED BY runs_status{active}"
            )
            if statuses
            else ""
        )
        rows = await self._fetchall(
            "SELECT SUM(runs), "
            "SUM(CASE WHEN status IN ('COMPLETED', 'PARTIAL') THEN runs ELSE 0 END), "
            "SUM(CASE WHEN status = 'FAILED' THEN runs ELSE 0 END), "
            "SUM(items_total), SUM(items_success), SUM(items_failed), SUM(items_skipped), "
            "SUM(timed), SUM(duration_sum) FROM ("
            "SELECT status, runs, timed, duration_sum, items_total, items_success, items_failed, items_skipped "
            f"FROM {rollup}{finished}{active_rows})",
            [*args, *(active_args if statuses else ())],
        )
        return summary_of(rows[0])

    async def run_stats(self, *, first_day: int, last_day: int, job: str | None = None) -> RunStats:
        # Several queries that must agree: one call on the reader's thread, inside one read transaction.
        assert self._reader is not None
        return await self._reader.run(
            functools.partial(read_run_stats, first_day=first_day, last_day=last_day, job=job)
        )

    async def last_run(self, job: str) -> Run | None:
        rows = await self._fetchall(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE job = ? ORDER BY id DESC LIMIT 1", (job,)
        )
        return row_to_run(rows[0]) if rows else None

    async def active_runs(self) -> list[Run]:
        rows = await self._fetchall(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE status IN ('PENDING', 'PROCESSING') ORDER BY id"
        )
        return [row_to_run(row) for row in rows]

    async def count_by_status(self) -> dict[RunStatus, int]:
        rows = await self._fetchall(
            "SELECT status, SUM(runs) FROM run_days_all GROUP BY status UNION ALL "
            f"SELECT status, COUNT(*) FROM runs INDEXED BY runs_status WHERE status IN ({ACTIVE}) GROUP BY status"
        )
        counts = {status: 0 for status in RunStatus}
        for status, n in rows:
            counts[RunStatus(status)] += n
        return counts

    async def find_idempotent(self, job: str, key: str, since: int) -> int | None:
        rows = await self._fetchall(
            "SELECT run_id FROM idempotency WHERE job = ? AND key = ? AND created_at >= ?", (job, key, since)
        )
        return int(rows[0][0]) if rows else None

    async def scheduled_times(self, job: str, times: Sequence[int]) -> set[int]:
        if not times:
            return set()
        rows = await self._fetchall(
            "SELECT scheduled_for FROM runs WHERE job = ? AND scheduled_for BETWEEN ? AND ?",
            (job, min(times), max(times)),
        )
        wanted = set(times)
        return {int(row[0]) for row in rows if row[0] in wanted}

    async def job_states(self) -> dict[str, JobState]:
        rows = await self._fetchall(
            "SELECT job, paused, last_fire_at, skipped_fires, last_skipped_at, consecutive_failures, "
            "last_run_id, last_skip_reason FROM job_state"
        )
        return {row[0]: JobState(row[0], bool(row[1]), *row[2:]) for row in rows}
