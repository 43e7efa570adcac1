"""SQLite store: WAL, one writer that commits in groups, one reader for queries, each a connection
on a thread of its own (see sqlite_thread).

Group commit: callers hand rows to `write()`. A single writer task takes everything handed in
since its last commit and writes it in one transaction, so a busy daemon pays one commit for many
transitions and an idle one commits at once (no timer is added to the latency of a lone write).
Rows handed to write_lazy() (progress ticks) ride along with the next commit, or are
flushed by a slow timer; they never open a transaction of their own per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

from jobd.models import Counts, Run, RunStatus, TriggerSource, compact_json
from jobd.store.base import (
    DeletedRuns,
    IdempotencyKey,
    JobState,
    RunFilter,
    RunStats,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from jobd.store.migrations import migrate
from jobd.store.sqlite_stats import ACTIVE, read_run_stats
from jobd.store.sqlite_thread import ConnectionThread

RUN_COLUMNS = (
    "id",
    "job",
    "status",
    "progress",
    "message",
    "triggered_by",
    "params",
    "attempt",
    "max_attempts",
    "scheduled_for",
    "run_after",
    "created_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "counts_total",
    "counts_success",
    "counts_failed",
    "counts_skipped",
    "result",
    "error",
    "exit_code",
    "retry_of",
    "log_tail",
    "updated_at",
)
# What a run is never changes after it is created; leaving these columns out of the update spares
# SQLite the upkeep of the indexes on them at every transition.
_IMMUTABLE = frozenset(
    {"id", "job", "triggered_by", "params", "attempt", "max_attempts", "scheduled_for", "created_at", "retry_of"}
)
JOB_STATE_COLUMNS = (
    "job",
    "paused",
    "last_fire_at",
    "skipped_fires",
    "last_skipped_at",
    "consecutive_failures",
    "last_run_id",
)


def _upserts(table: str, columns: Sequence[str], key: str, keep: Iterable[str] = ()) -> tuple[str, str]:
    """(the upsert of one row, the same for a JSON array of rows) into `table`; on conflict with
    `key`, every column but those in `keep` takes the new value.

    A group commit uses the second: one statement, so SQLite's thread takes the GIL once per
    batch. executemany() binds each row holding the GIL and releases it around each row's step,
    trading it with the event loop once per row, and neither then runs at full speed. The JSON
    functions are part of SQLite since 3.38 (and of most builds long before).
    """
    names = ", ".join(columns)
    update = ", ".join(f"{col} = excluded.{col}" for col in columns if col != key and col not in keep)
    conflict = f"ON CONFLICT({key}) DO UPDATE SET {update}"
    extract = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(columns)))
    return (
        f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))}) {conflict}",
        # WHERE true: SQLite's upsert grammar needs it after a SELECT.
        f"INSERT INTO {table} ({names}) SELECT {extract} FROM json_each(?) WHERE true {conflict}",
    )


_UPSERT_RUN = _upserts("runs", RUN_COLUMNS, "id", _IMMUTABLE)
_UPSERT_JOB_STATE = _upserts("job_state", JOB_STATE_COLUMNS, "job")
# UTF-8 as it is (SQLite copies it), and no NaN: it would not be JSON.
_rows_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_INSERT_KEY = "INSERT OR REPLACE INTO idempotency (job, key, run_id, created_at) VALUES (?, ?, ?, ?)"
_LAZY_FLUSH_S = 1.0
CommitCallback = Callable[[Exception | None], None]
T = TypeVar("T")


def _migrate_and_next_id(conn: sqlite3.Connection) -> int:
    migrate(conn)
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()
    return int(row[0]) + 1 if row else 1


# A statement for the writer's thread: SQL, its parameters, and whether they are many rows.
Statement = tuple[str, Sequence[Any], bool]


# Performance: see docs/performance.md (Group commit: the rows as one JSON document)
def _upsert(statements: tuple[str, str], rows: list[tuple[Any, ...]]) -> Statement:
    payload = _rows_json(rows)
    if "\\u0000" in payload:  # json_extract() would cut a string at a NUL: bind these row by row
        return statements[0], rows, True
    return statements[1], (payload,), False


def _execute_all(statements: list[Statement], conn: sqlite3.Connection) -> None:
    for sql, args, many in statements:
        if many:
            conn.executemany(sql, args)
        else:
            conn.execute(sql, args)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else compact_json(value)


def run_to_row(run: Run) -> tuple[Any, ...]:
    c = run.counts
    return (
        run.id,
        run.job,
        run.status.value,
        run.progress,
        run.message,
        run.triggered_by.value,
        compact_json(run.params) if run.params else "{}",
        run.attempt,
        run.max_attempts,
        run.scheduled_for,
        run.run_after,
        run.created_at,
        run.started_at,
        run.finished_at,
        run.duration_ms,
        c.total,
        c.success,
        c.failed,
        c.skipped,
        _json_or_none(run.result),
        run.error,
        run.exit_code,
        run.retry_of,
        run.log_tail,
        run.updated_at,
    )


def row_to_run(row: Sequence[Any]) -> Run:
    (
        rid,
        job,
        status,
        progress,
        message,
        triggered_by,
        params,
        attempt,
        max_attempts,
        scheduled_for,
        run_after,
        created_at,
        started_at,
        finished_at,
        _duration,
        total,
        success,
        failed,
        skipped,
        result,
        error,
        exit_code,
        retry_of,
        log_tail,
        updated_at,
    ) = row
    return Run(
        id=rid,
        job=job,
        status=RunStatus(status),
        triggered_by=TriggerSource(triggered_by),
        created_at=created_at,
        params=json.loads(params),
        attempt=attempt,
        max_attempts=max_attempts,
        progress=progress,
        message=message,
        scheduled_for=scheduled_for,
        run_after=run_after,
        started_at=started_at,
        finished_at=finished_at,
        counts=Counts(total, success, failed, skipped),
        result=None if result is None else json.loads(result),
        error=error,
        exit_code=exit_code,
        retry_of=retry_of,
        log_tail=log_tail or "",
        updated_at=updated_at,
    )


def _summary(row: Sequence[Any]) -> dict[str, Any]:
    runs, ok, failed, items, success, items_failed, skipped, timed, duration_sum = row
    return {
        "runs": runs or 0,
        "successful_runs": ok or 0,
        "failed_runs": failed or 0,
        "total_items": items or 0,
        "successful_items": success or 0,
        "failed_items": items_failed or 0,
        "skipped_items": skipped or 0,
        "average_duration_ms": round(duration_sum / timed, 1) if timed else None,
    }


def _rollup_answers(f: RunFilter) -> bool:
    """Whether the rollups (plus the active runs) can answer for this filter: no time bounds."""
    return f.since is None and f.until is None


def _where(f: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.job is not None:
        clauses.append("job = ?")
        args.append(f.job)
    if f.status:
        clauses.append(f"status IN ({', '.join('?' * len(f.status))})")
        args.extend(s.value for s in f.status)
    if f.triggered_by:
        clauses.append(f"triggered_by IN ({', '.join('?' * len(f.triggered_by))})")
        args.extend(t.value for t in f.triggered_by)
    if f.since is not None:
        clauses.append("created_at >= ?")
        args.append(f.since)
    if f.until is not None:
        clauses.append("created_at < ?")
        args.append(f.until)
    if f.before_id is not None:
        clauses.append("id < ?")
        args.append(f.before_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _settle_future(future: asyncio.Future[None], error: Exception | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _settle_all(waiters: list[CommitCallback], error: Exception | None) -> None:
    """Call each, in the order the rows were handed in."""
    for waiter in waiters:
        try:
            waiter(error)
        except Exception:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a commit callback failed", "exception": sys.exc_info()[1]}
            )


class SQLiteStore:
    def __init__(self, path: Path, *, synchronous: str = "normal", log: Any = None) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.log = log or structlog.get_logger("jobd.store")
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._lock_file: int | None = None
        self._next_id = 1
        self._pending_runs: dict[int, Run] = {}
        self._pending_states: dict[str, JobState] = {}
        self._pending_keys: list[IdempotencyKey] = []
        self._lazy_runs: dict[int, Run] = {}
        self._waiters: list[CommitCallback] = []
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._lazy_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            # Migrations run on the writer's connection, before the reader opens.
            self._writer = ConnectionThread(
                self.path,
                name="writer",
                pragmas=("journal_mode = WAL", f"synchronous = {self.synchronous.upper()}", "busy_timeout = 5000"),
            )
            await self._writer.open()
            self._next_id = await self._writer.run(_migrate_and_next_id)
            self._reader = ConnectionThread(
                self.path, name="reader", pragmas=("busy_timeout = 5000", "query_only = 1"), autocommit=True
            )
            await self._reader.open()
        except BaseException as exc:
            await self._close_connections()
            self._release_lock()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
            if isinstance(exc, StoreError):
                raise StoreError(f"{self.path}: {exc}") from None
            raise
        self._writer_task = asyncio.create_task(self._write_loop(), name="store-writer")
        self._lazy_task = asyncio.create_task(self._lazy_loop(), name="store-lazy-flush")

    async def close(self) -> None:
        if self._writer_task is not None:
            await self.flush()
        for task in (self._lazy_task, self._writer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer_task = self._lazy_task = None
        await self._close_connections()
        self._release_lock()

    async def _close_connections(self) -> None:
        # The reader first: the writer's is then the last connection, and its close checkpoints the WAL.
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def _acquire_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLocked(
                f"{self.path} is in use by another jobd (pid {holder}); two daemons must never run the same queue"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_file = fd

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # -- writes ------------------------------------------------------------------------------

    def allocate_run_id(self) -> int:
        run_id = self._next_id
        self._next_id += 1
        return run_id

    async def write(
        self,
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
    ) -> None:
        # The waiter is this call's own: a cancelled caller cancels only it (the writer skips it),
        # and the rows are committed all the same.
        await self.submit(runs, job_states, keys)

    def submit(
        self,
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
    ) -> asyncio.Future[None]:
        """Hand rows to the writer without waiting; the future is done once they are committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.submit_then(functools.partial(_settle_future, future), runs, job_states, keys)
        return future

    def submit_then(
        self,
        then: CommitCallback,
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
    ) -> None:
        """submit(), with `then(None)` called once the rows are committed (`then(error)` if that
        failed), by the writer itself: no future, and no trip through the event loop's queue, per
        transition. `then` must not raise or block; what it raises is logged and dropped."""
        for run in runs:
            self._lazy_runs.pop(run.id, None)
            self._pending_runs[run.id] = run
        for state in job_states:
            self._pending_states[state.job] = state
        self._pending_keys.extend(keys)
        self._waiters.append(then)
        self._wake.set()

    def write_lazy(self, run: Run) -> None:
        if run.id not in self._pending_runs:
            self._lazy_runs[run.id] = run

    async def flush(self) -> None:
        """Commit everything handed in so far, lazy rows included."""
        self._pending_runs.update(self._lazy_runs)
        self._lazy_runs.clear()
        await self.write()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            runs, self._pending_runs = self._pending_runs, {}
            for run_id, run in self._lazy_runs.items():
                runs.setdefault(run_id, run)
            self._lazy_runs = {}
            states, self._pending_states = self._pending_states, {}
            keys, self._pending_keys = self._pending_keys, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._commit(runs.values(), states.values(), keys)
            except Exception as exc:  # fail the waiters; the loop itself must survive
                self.log.error("commit_failed", error=str(exc), runs=len(runs), waiters=len(waiters))
                _settle_all(waiters, exc)
                continue
            _settle_all(waiters, None)

    async def _commit(self, runs: Iterable[Run], states: Iterable[JobState], keys: list[IdempotencyKey]) -> None:
        assert self._writer is not None
        run_rows = [run_to_row(run) for run in runs]
        state_rows = [
            (
                s.job,
                int(s.paused),
                s.last_fire_at,
                s.skipped_fires,
                s.last_skipped_at,
                s.consecutive_failures,
                s.last_run_id,
            )
            for s in states
        ]
        key_rows = [(k.job, k.key, k.run_id, k.created_at) for k in keys]
        if not (run_rows or state_rows or key_rows):
            return
        statements: list[Statement] = []
        if run_rows:
            statements.append(_upsert(_UPSERT_RUN, run_rows))
        if state_rows:
            statements.append(_upsert(_UPSERT_JOB_STATE, state_rows))
        if key_rows:
            statements.append((_INSERT_KEY, key_rows, True))
        await self._transaction(functools.partial(_execute_all, statements))

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """One transaction on the writer's thread, which takes them one at a time in the order they
        come (group commits, retention)."""
        assert self._writer is not None
        try:
            return await self._writer.transaction(work)
        except sqlite3.OperationalError as exc:  # SQLITE_BUSY, SQLITE_FULL, SQLITE_IOERR and their kind
            raise StoreUnavailable(f"the store cannot be used now ({exc}); try again") from exc

    async def _lazy_loop(self) -> None:
        while True:
            await asyncio.sleep(_LAZY_FLUSH_S)
            if self._lazy_runs and not self._wake.is_set():
                self._wake.set()

    # -- reads -------------------------------------------------------------------------------

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
        clause, args = _where(where)
        rows = await self._fetchall(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        unpaged = dataclasses.replace(where, before_id=None)
        if _rollup_answers(unpaged):
            total = (await self._rollup_summary(unpaged))["runs"]
        else:
            clause, args = _where(unpaged)
            total = int((await self._fetchall(f"SELECT COUNT(*) FROM runs{clause}", args))[0][0])
        return [row_to_run(row) for row in rows], total

    async def summarize_runs(self, where: RunFilter) -> dict[str, Any]:
        if _rollup_answers(where) and where.before_id is None:
            return await self._rollup_summary(where)
        clause, args = _where(where)
        rows = await self._fetchall(
            "SELECT COUNT(*), "
            "SUM(CASE WHEN status IN ('COMPLETED', 'PARTIAL') THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END), "
            "SUM(counts_total), SUM(counts_success), SUM(counts_failed), SUM(counts_skipped), "
            f"COUNT(duration_ms), SUM(duration_ms) FROM runs{clause}",
            args,
        )
        return _summary(rows[0])

    async def _rollup_summary(self, where: RunFilter) -> dict[str, Any]:
        """Finished runs from a rollup (one job's from run_totals, every job's from run_days_all, a few
        rows a day), active ones from runs, read in one statement (one snapshot). Active runs are
        found by status: by job, SQLite would walk every run the job ever had."""
        rollup = "run_totals" if where.job is not None else "run_days_all"
        finished, args = _where(RunFilter(job=where.job, status=where.status, triggered_by=where.triggered_by))
        statuses = tuple(
            status for status in (RunStatus.PENDING, RunStatus.PROCESSING) if not where.status or status in where.status
        )
        active, active_args = _where(RunFilter(job=where.job, status=statuses, triggered_by=where.triggered_by))
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
        return _summary(rows[0])

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

    async def job_states(self) -> dict[str, JobState]:
        rows = await self._fetchall(
            "SELECT job, paused, last_fire_at, skipped_fires, last_skipped_at, consecutive_failures, "
            "last_run_id FROM job_state"
        )
        return {row[0]: JobState(row[0], bool(row[1]), row[2], row[3], row[4], row[5], row[6]) for row in rows}

    async def delete_runs(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns:
        """Delete finished runs older than their status's cutoff (finished_at < cutoff), looking at
        up to `limit` candidates in (finished_at, id) order from `after` on.

        The newest run is kept, so ids never repeat after a restart, and so is each job's last run.
        """
        if not cutoffs:
            return DeletedRuns([], None)
        start_at, start_id = after if after is not None else (-1, -1)
        # Walking the finished_at index up to the latest cutoff; runs kept longer are passed over
        # once, by the cursor, not read again by every batch.
        rows = await self._fetchall(
            "SELECT id, status, finished_at, "
            "id = (SELECT MAX(id) FROM runs) "
            "OR id IN (SELECT last_run_id FROM job_state WHERE last_run_id IS NOT NULL) "
            "FROM runs WHERE finished_at >= ? AND finished_at < ? AND NOT (finished_at = ? AND id <= ?) "
            "ORDER BY finished_at, id LIMIT ?",
            [start_at, max(cutoffs.values()), start_at, start_id, limit],
        )
        doomed = [
            (int(run_id), RunStatus(status))
            for run_id, status, finished_at, kept in rows
            if not kept and finished_at < cutoffs.get(RunStatus(status), -1)
        ]
        if doomed:
            await self._transaction(
                functools.partial(
                    _execute_all, [("DELETE FROM runs WHERE id = ?", [(run_id,) for run_id, _ in doomed], True)]
                )
            )
        cursor = (int(rows[-1][2]), int(rows[-1][0])) if len(rows) == limit else None
        return DeletedRuns(doomed, cursor)

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int:
        """Delete up to `limit` keys created before `created_before`; returns how many went."""

        def delete(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created_at < ? LIMIT ?)",
                (created_before, limit),
            )
            return max(0, cursor.rowcount)

        return await self._transaction(delete)
