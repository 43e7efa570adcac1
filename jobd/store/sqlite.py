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
import fcntl
import functools
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

from jobd.models import Run, RunStatus
from jobd.store import audit
from jobd.store.base import (
    DeletedRuns,
    IdempotencyKey,
    JobState,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from jobd.store.migrations import migrate
from jobd.store.notifications import NewNotification, insert_statement
from jobd.store.sqlite_reads import SQLiteReads
from jobd.store.sqlite_rows import (
    INSERT_KEY,
    UPSERT_JOB_STATE,
    UPSERT_RUN,
    Statement,
    execute_all,
    run_to_row,
    upsert,
)
from jobd.store.sqlite_thread import ConnectionThread

_LAZY_FLUSH_S = 1.0
CommitCallback = Callable[[Exception | None], None]
T = TypeVar("T")


def _migrate_and_next_id(conn: sqlite3.Connection) -> int:
    migrate(conn)
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()
    return int(row[0]) + 1 if row else 1


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


class SQLiteStore(SQLiteReads):
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
        self._pending_notifications: list[NewNotification] = []
        self._lazy_runs: dict[int, Run] = {}
        self._pending_audit: list[audit.AuditRecord] = []
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
        notifications: Iterable[NewNotification] = (),
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
        self._pending_notifications.extend(notifications)
        self._waiters.append(then)
        self._wake.set()

    def write_lazy(self, run: Run) -> None:
        if run.id not in self._pending_runs:
            self._lazy_runs[run.id] = run

    def append_audit(self, record: audit.AuditRecord) -> None:
        """An audit record rides along with the next commit (or the lazy flush): it never opens a
        transaction of its own while others are being committed."""
        self._pending_audit.append(record)

    async def flush_audit(self) -> None:
        await self.write()

    async def list_audit(self, where: audit.AuditFilter, *, limit: int) -> tuple[list[audit.AuditRecord], int]:
        page, args, count, count_args = audit.page_sql(where, "?", limit)
        rows = await self._fetchall(page, args)
        total = (await self._fetchall(count, count_args))[0][0]
        return [audit.record_of(row) for row in rows], int(total)

    async def delete_audit(self, *, before: int, limit: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY at LIMIT ?)", (before, limit)
            )
            return max(0, cursor.rowcount)

        return await self._transaction(delete)

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
            notifications, self._pending_notifications = self._pending_notifications, []
            records, self._pending_audit = self._pending_audit, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._commit(runs.values(), states.values(), keys, records, notifications)
            except Exception as exc:  # fail the waiters; the loop itself must survive
                self.log.error("commit_failed", error=str(exc), runs=len(runs), waiters=len(waiters))
                _settle_all(waiters, exc)
                continue
            _settle_all(waiters, None)

    async def _commit(
        self,
        runs: Iterable[Run],
        states: Iterable[JobState],
        keys: list[IdempotencyKey],
        records: list[audit.AuditRecord],
        notifications: Sequence[NewNotification] = (),
    ) -> None:
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
                s.last_skip_reason,
            )
            for s in states
        ]
        key_rows = [(k.job, k.key, k.run_id, k.created_at) for k in keys]
        if not (run_rows or state_rows or key_rows or records or notifications):
            return
        statements: list[Statement] = []
        if run_rows:
            statements.append(upsert(UPSERT_RUN, run_rows))
        if state_rows:
            statements.append(upsert(UPSERT_JOB_STATE, state_rows))
        if key_rows:
            statements.append((INSERT_KEY, key_rows, True))
        if notifications:  # after the job states: a snooze is read from job_state
            statements.append(insert_statement(notifications))
        if records:
            statements.append(upsert(audit.SQLITE_INSERTS, [record.row() for record in records]))
        await self._transaction(functools.partial(execute_all, statements))

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """One transaction on the writer's thread, which takes them one at a time in the order they
        come (group commits, retention)."""
        assert self._writer is not None
        try:
            return await self._writer.transaction(work)
        except sqlite3.OperationalError as exc:  # SQLITE_BUSY, SQLITE_FULL, SQLITE_IOERR and their kind
            raise StoreUnavailable(f"the store cannot be used now ({exc}); try again") from exc

    async def write_with(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """A transaction of the caller's on the writer's thread, in turn with the group commits."""
        return await self._transaction(work)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A query on the reader's connection."""
        return await self._fetchall(sql, args)

    async def _lazy_loop(self) -> None:
        while True:
            await asyncio.sleep(_LAZY_FLUSH_S)
            if (self._lazy_runs or self._pending_audit) and not self._wake.is_set():
                self._wake.set()

    # -- retention ---------------------------------------------------------------------------

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
                    execute_all, [("DELETE FROM runs WHERE id = ?", [(run_id,) for run_id, _ in doomed], True)]
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
