"""The read side of the store on PostgreSQL: what the API asks of the run history (pages of runs,
totals, summaries, statistics), what a node loads at start, and retention, with the same answers
as the SQLite store.

PostgresStore implements the read and retention methods of `Store` (the `StoreReads` protocol).
It has no write path: on a cluster, runs are created, claimed and finished by the backend through
the operations of runs.py and cluster.py, each in a transaction that also writes its event, and
run ids come from the database's sequence, not from a counter in one process (which is what
`Store.allocate_run_id()` is).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from jobd.models import Run, RunStatus
from jobd.store import audit
from jobd.store.base import RUN_COLUMNS, DeletedRuns, JobState, RunFilter, RunStats, row_to_run, summary_of
from jobd.store.postgres import events
from jobd.store.postgres.cluster import load_job_states, retention_lock, trim_fires
from jobd.store.postgres.stats import read_run_stats

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_SELECT = f"SELECT {', '.join(RUN_COLUMNS)}, node FROM runs"  # the node that claimed the run after the shared columns
_ACTIVE = "status IN ('PENDING', 'PROCESSING')"
# The batch size of get_runs(), as in the SQLite store (each batch comes back in id order).
_IDS_PER_QUERY = 500
_SUMMARY = (
    "SELECT count(*), "
    "count(*) FILTER (WHERE status IN ('COMPLETED', 'PARTIAL')), "
    "count(*) FILTER (WHERE status = 'FAILED'), "
    "sum(counts_total)::bigint, sum(counts_success)::bigint, sum(counts_failed)::bigint, "
    "sum(counts_skipped)::bigint, count(duration_ms), sum(duration_ms)::bigint FROM runs"
)


def _where(f: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.job is not None:
        clauses.append("job = %s")
        args.append(f.job)
    if f.jobs is not None:
        clauses.append("job = ANY(%s)")
        args.append(list(f.jobs))
    if f.status:
        clauses.append("status = ANY(%s)")
        args.append([s.value for s in f.status])
    if f.triggered_by:
        clauses.append("triggered_by = ANY(%s)")
        args.append([t.value for t in f.triggered_by])
    if f.since is not None:
        clauses.append("created_at >= %s")
        args.append(f.since)
    if f.until is not None:
        clauses.append("created_at < %s")
        args.append(f.until)
    if f.parent is not None:
        clauses.append("parent_run_id = %s")
        args.append(f.parent)
    if f.before_id is not None:
        clauses.append("id < %s")
        args.append(f.before_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class PostgresStore:
    """Reads of the cluster's history through a pool of autocommit connections (open_pool()).

    The pool is the caller's: open() opens it if it is not open yet, and close() closes it only
    then, so a backend sharing its pool with this store keeps it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._opened_pool = False

    async def open(self) -> None:
        if self.pool.closed:
            await self.pool.open(wait=True)
            self._opened_pool = True

    async def close(self) -> None:
        if self._opened_pool:
            self._opened_pool = False
            await self.pool.close()

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[TupleRow]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    # -- runs ------------------------------------------------------------------------------

    async def get_run(self, run_id: int) -> Run | None:
        rows = await self._fetchall(f"{_SELECT} WHERE id = %s", (run_id,))
        return row_to_run(rows[0]) if rows else None

    async def get_runs(self, run_ids: Sequence[int]) -> list[Run]:
        ids = list(run_ids)
        runs: list[Run] = []
        for start in range(0, len(ids), _IDS_PER_QUERY):
            rows = await self._fetchall(
                f"{_SELECT} WHERE id = ANY(%s) ORDER BY id", (ids[start : start + _IDS_PER_QUERY],)
            )
            runs.extend(row_to_run(row) for row in rows)
        return runs

    async def list_runs(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]:
        """A page of runs, newest first, and how many runs match (the cursor, before_id, aside)."""
        clause, args = _where(where)
        counted, count_args = _where(dataclasses.replace(where, before_id=None))
        async with self.pool.connection() as conn, conn.pipeline():
            page = await conn.execute(f"{_SELECT}{clause} ORDER BY id DESC LIMIT %s OFFSET %s", [*args, limit, offset])
            count = await conn.execute(f"SELECT count(*) FROM runs{counted}", count_args)
            rows = await page.fetchall()
            total = await count.fetchone()
        assert total is not None
        return [row_to_run(row) for row in rows], int(total[0])

    async def summarize_runs(self, where: RunFilter) -> dict[str, Any]:
        clause, args = _where(where)
        rows = await self._fetchall(f"{_SUMMARY}{clause}", args)
        return summary_of(rows[0])

    async def run_stats(self, *, first_day: int, last_day: int, job: str | None = None) -> RunStats:
        async with self.pool.connection() as conn:
            return await read_run_stats(conn, first_day, last_day, job)

    async def last_run(self, job: str) -> Run | None:
        rows = await self._fetchall(f"{_SELECT} WHERE job = %s ORDER BY id DESC LIMIT 1", (job,))
        return row_to_run(rows[0]) if rows else None

    async def last_runs(self, jobs: Iterable[str]) -> dict[str, Run]:
        """last_run() of each job, in one query (GET /jobs asks it for every job)."""
        rows = await self._fetchall(
            f"SELECT r.* FROM unnest(%s::text[]) AS j (name) "
            f"CROSS JOIN LATERAL ({_SELECT} WHERE job = j.name ORDER BY id DESC LIMIT 1) r",
            (list(jobs),),
        )
        return {run.job: run for run in map(row_to_run, rows)}

    async def active_runs(self) -> list[Run]:
        rows = await self._fetchall(f"{_SELECT} WHERE {_ACTIVE} ORDER BY id")
        return [row_to_run(row) for row in rows]

    async def count_by_status(self) -> dict[RunStatus, int]:
        counts = dict.fromkeys(RunStatus, 0)
        for status, n in await self._fetchall("SELECT status, count(*) FROM runs GROUP BY status"):
            counts[RunStatus(status)] = int(n)
        return counts

    # -- job state and idempotency keys ---------------------------------------------------

    async def find_idempotent(self, job: str, key: str, since: int) -> int | None:
        rows = await self._fetchall(
            "SELECT run_id FROM idempotency WHERE job = %s AND key = %s AND created_at >= %s", (job, key, since)
        )
        return int(rows[0][0]) if rows else None

    async def scheduled_times(self, job: str, times: Sequence[int]) -> set[int]:
        rows = await self._fetchall(
            "SELECT scheduled_for FROM runs WHERE job = %s AND scheduled_for = ANY(%s)", (job, list(times))
        )
        return {int(row[0]) for row in rows}

    async def job_states(self) -> dict[str, JobState]:
        async with self.pool.connection() as conn:
            return {state.job: state for state in await load_job_states(conn)}

    # -- retention -------------------------------------------------------------------------

    async def delete_runs(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns:
        """Delete finished runs older than their status's cutoff (finished_at < cutoff), looking at
        up to `limit` candidates in (finished_at, id) order from `after` on.

        The newest run is kept, so ids never repeat, and so is each job's last run.
        """
        if not cutoffs:
            return DeletedRuns([], None)
        start_at, start_id = after if after is not None else (-1, -1)
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, status, finished_at, "
                "id = (SELECT max(id) FROM runs) "
                "OR id IN (SELECT last_run_id FROM job_state WHERE last_run_id IS NOT NULL) "
                "FROM runs WHERE finished_at >= %s AND finished_at < %s AND (finished_at, id) > (%s, %s) "
                "ORDER BY finished_at, id LIMIT %s",
                (start_at, max(cutoffs.values()), start_at, start_id, limit),
            )
            rows = await cur.fetchall()
            doomed = [
                (int(run_id), RunStatus(status))
                for run_id, status, finished_at, kept in rows
                if not kept and finished_at < cutoffs.get(RunStatus(status), -1)
            ]
            if doomed:
                await conn.execute("DELETE FROM runs WHERE id = ANY(%s)", ([run_id for run_id, _ in doomed],))
        cursor = (int(rows[-1][2]), int(rows[-1][0])) if len(rows) == limit else None
        return DeletedRuns(doomed, cursor)

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int:
        """Delete up to `limit` keys created before `created_before`; returns how many went."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM idempotency WHERE (job, key) IN "
                "(SELECT job, key FROM idempotency WHERE created_at < %s LIMIT %s)",
                (created_before, limit),
            )
            return max(0, cur.rowcount)

    # -- the audit log (written by the node's group commit, cluster.writer) --------------------

    async def list_audit(self, where: audit.AuditFilter, *, limit: int) -> tuple[list[audit.AuditRecord], int]:
        page, args, count, count_args = audit.page_sql(where, "%s", limit)
        async with self.pool.connection() as conn, conn.pipeline():
            rows = await (await conn.execute(page, args)).fetchall()
            total = await (await conn.execute(count, count_args)).fetchone()
        assert total is not None
        return [audit.record_of(row) for row in rows], int(total[0])

    async def delete_audit(self, *, before: int, limit: int) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < %s ORDER BY at LIMIT %s)",
                (before, limit),
            )
            return max(0, cur.rowcount)

    # -- retention of the tables the nodes share ----------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        """Whether this node is the one running retention for the block: one node at a time
        cleans up, under an advisory lock held by a connection kept for the block."""
        async with self.pool.connection() as conn, retention_lock(conn) as held:
            yield held

    async def events_horizon(self, keep: int) -> events.Position | None:
        """Where the events table may be trimmed up to: before its newest `keep` settled events."""
        async with self.pool.connection() as conn:
            return await events.trim_horizon(conn, keep)

    async def trim_events(self, *, through: events.Position, created_before: int, limit: int) -> int:
        """One batch of events.trim_events(); returns how many went."""
        async with self.pool.connection() as conn:
            return max(0, await events.trim_events(conn, through=through, created_before=created_before, limit=limit))

    async def trim_fires(self, *, before: int, limit: int) -> int:
        """One batch of fire records older than `before` (each job's last one is kept)."""
        async with self.pool.connection() as conn:
            return max(0, await trim_fires(conn, before, limit))
