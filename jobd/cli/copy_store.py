"""`copy-store`: a single node's whole history, from its SQLite file into an empty PostgreSQL
store, so that a cluster carries on where the node stopped.

What moves: every run with all its columns and its id (so its log file, found by id under the
logs folder, stays its own), job state (pause, failure streaks, last fire, snooze), idempotency
keys, each job's last cron fire as the cluster's record of it (catch-up after the move starts
there), the notifications record with their ids (pending ones are delivered by the cluster), and
the audit log (its records numbered again by the target, in their order). The SQLite statistics
tables do not move: they are aggregates of the runs.

All of it is one PostgreSQL transaction: a copy that fails half-way leaves the target as it was,
empty, and can simply be run again; the rows are streamed with COPY and read from SQLite in
batches, so memory stays flat whatever the history's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.rows import TupleRow

from jobd.store.audit import COLUMNS as AUDIT_COLUMNS
from jobd.store.base import RUN_COLUMNS
from jobd.store.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from jobd.store.notifications import COLUMNS as NOTIFICATION_COLUMNS

BATCH_ROWS = 5000
FIRE_NODE = "copy-store"  # the node named in the fire records made from the SQLite job state
_JOB_STATE_COLUMNS = (
    "job",
    "paused",
    "last_fire_at",
    "skipped_fires",
    "last_skipped_at",
    "consecutive_failures",
    "last_run_id",
    "last_skip_reason",
    "snoozed_until",
)
_IDEMPOTENCY_COLUMNS = ("job", "key", "run_id", "created_at")
_STATUS = RUN_COLUMNS.index("status")


class CopyRefused(Exception):
    """The copy was not started: the source or the target is not fit for it (one line)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Copied:
    runs: int
    job_states: int
    idempotency_keys: int
    fires: int
    last_run_id: int | None


@contextlib.contextmanager
def hold_source(path: Path) -> Iterator[None]:
    """Hold the SQLite store's lock (the one a daemon takes when it opens the store) for the whole
    copy: a running jobd makes the copy refuse, and none can start until it is over."""
    if not path.is_file():
        raise CopyRefused(f"{path}: no such file")
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise CopyRefused(
                f"{path} is in use by a running jobd (pid {holder}): stop it first, so that the copy holds its last run"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite store, read only once open; refused unless it is a jobd store this jobd knows."""
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise CopyRefused(f"{path}: cannot open: {exc}") from None
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("PRAGMA query_only = 1")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise CopyRefused(f"{path}: not a jobd store ({exc})") from None
    if version == 0:
        db.close()
        raise CopyRefused(f"{path}: not a jobd store (no schema)")
    if version > len(SQLITE_MIGRATIONS):
        db.close()
        raise CopyRefused(f"{path}: schema version {version}, newer than this jobd knows ({len(SQLITE_MIGRATIONS)})")
    return db


def _text(value: Any) -> Any:
    # PostgreSQL's text cannot hold NUL (a process's output may): the cluster store writes U+FFFD.
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _batches(db: sqlite3.Connection, query: str) -> Iterator[list[Any]]:
    cursor = db.execute(query)
    while rows := cursor.fetchmany(BATCH_ROWS):
        yield rows


def _copy(
    pg: psycopg.Connection[TupleRow], table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]
) -> int:
    count = 0
    with pg.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _runs(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    # A PROCESSING run is one the node was executing when it stopped uncleanly. It is copied as
    # it is, owned by no live node and given a claim token: the cluster's reaper then ends it or
    # queues it again by the job's on_interrupt, as a crashed node's run.
    for batch in _batches(db, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id"):
        for row in batch:
            token = uuid.uuid4() if row[_STATUS] == "PROCESSING" else None
            yield (*(_text(value) for value in row), token)


def _job_states(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    for batch in _batches(db, f"SELECT {', '.join(_JOB_STATE_COLUMNS)} FROM job_state ORDER BY job"):
        for job, paused, *rest in batch:
            yield (job, bool(paused), *rest)


def _keys(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    for batch in _batches(db, f"SELECT {', '.join(_IDEMPOTENCY_COLUMNS)} FROM idempotency ORDER BY job, key"):
        for row in batch:
            yield tuple(_text(value) for value in row)


def _audit(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is None:
        return  # a store from before the audit log
    for batch in _batches(db, f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY id"):
        for row in batch:
            yield tuple(_text(value) for value in row)


def _notifications(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    # Pending ones stay pending: the cluster delivers them (no lease: the copying node held none).
    for batch in _batches(db, f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications ORDER BY id"):
        for row in batch:
            yield tuple(_text(value) for value in row)


def copy_store(db: sqlite3.Connection, pg: psycopg.Connection[TupleRow]) -> Copied:
    """Copy into `pg` (with jobd's schema) in one transaction; refused if it holds any history."""
    db.execute("BEGIN")  # one snapshot of the source, however long the copy takes
    try:
        with pg.transaction():
            # Nodes started too early wait here instead of writing into the history being copied.
            pg.execute("LOCK TABLE runs, job_state, idempotency, fires IN EXCLUSIVE MODE")
            row = pg.execute(
                "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM job_state), "
                "(SELECT count(*) FROM idempotency), (SELECT count(*) FROM fires)"
            ).fetchone()
            found = dict(zip(("runs", "job states", "idempotency keys", "fire records"), row or ()))
            if any(found.values()):
                held = ", ".join(f"{count} {what}" for what, count in found.items() if count)
                raise CopyRefused(f"the target already holds {held}; copy-store fills an empty store only")
            runs = _copy(pg, "runs", (*RUN_COLUMNS, "claim_token"), _runs(db))
            states = _copy(pg, "job_state", _JOB_STATE_COLUMNS, _job_states(db))
            keys = _copy(pg, "idempotency", _IDEMPOTENCY_COLUMNS, _keys(db))
            cur = pg.execute(
                "INSERT INTO fires (job, scheduled_for, node) "
                "SELECT job, last_fire_at, %s FROM job_state WHERE last_fire_at IS NOT NULL",
                (FIRE_NODE,),
            )
            fires = cur.rowcount
            _copy(pg, "audit", AUDIT_COLUMNS, _audit(db))
            if _copy(pg, "notifications", NOTIFICATION_COLUMNS, _notifications(db)):
                pg.execute(
                    "SELECT setval(pg_get_serial_sequence('notifications', 'id'), (SELECT max(id) FROM notifications))"
                )
            last = pg.execute("SELECT max(id) FROM runs").fetchone()
            last_id = None if last is None or last[0] is None else int(last[0])
            if last_id is not None:  # the cluster's next run id follows the copied ones
                pg.execute("SELECT setval(pg_get_serial_sequence('runs', 'id'), %s)", (last_id,))
    finally:
        db.execute("ROLLBACK")
    return Copied(runs=runs, job_states=states, idempotency_keys=keys, fires=fires, last_run_id=last_id)
