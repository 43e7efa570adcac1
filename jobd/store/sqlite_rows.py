"""The SQLite store's rows: how a Run and a JobState are written as rows and read back, the
group commit's upsert statements, and the WHERE clause of a RunFilter."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from jobd.models import Run, compact_json
from jobd.store.base import IMMUTABLE_RUN_COLUMNS, RUN_COLUMNS, RunFilter

JOB_STATE_COLUMNS = (
    "job",
    "paused",
    "last_fire_at",
    "skipped_fires",
    "last_skipped_at",
    "consecutive_failures",
    "last_run_id",
    "last_skip_reason",
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


UPSERT_RUN = _upserts("runs", RUN_COLUMNS, "id", IMMUTABLE_RUN_COLUMNS)
UPSERT_JOB_STATE = _upserts("job_state", JOB_STATE_COLUMNS, "job")
# UTF-8 as it is (SQLite copies it), and no NaN: it would not be JSON.
_rows_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
INSERT_KEY = "INSERT OR REPLACE INTO idempotency (job, key, run_id, created_at) VALUES (?, ?, ?, ?)"


# A statement for the writer's thread: SQL, its parameters, and whether they are many rows.
Statement = tuple[str, Sequence[Any], bool]


# Performance: see docs/performance.md (Group commit: the rows as one JSON document)
def upsert(statements: tuple[str, str], rows: list[tuple[Any, ...]]) -> Statement:
    payload = _rows_json(rows)
    if "\\u0000" in payload:  # json_extract() would cut a string at a NUL: bind these row by row
        return statements[0], rows, True
    return statements[1], (payload,), False


def execute_all(statements: list[Statement], conn: sqlite3.Connection) -> None:
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
        run.parent_run_id,
        run.chain_depth,
        _json_or_none(run.children or None),
        run.priority,
    )


def rollup_answers(f: RunFilter) -> bool:
    """Whether the rollups (plus the active runs) can answer for this filter: no time bounds."""
    return f.since is None and f.until is None and f.parent is None


def where_clause(f: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.job is not None:
        clauses.append("job = ?")
        args.append(f.job)
    if f.jobs is not None:
        clauses.append(f"job IN ({', '.join('?' * len(f.jobs))})")
        args.extend(f.jobs)
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
    if f.parent is not None:
        clauses.append("parent_run_id = ?")
        args.append(f.parent)
    if f.before_id is not None:
        clauses.append("id < ?")
        args.append(f.before_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args
