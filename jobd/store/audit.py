"""The audit log's rows, shared by both stores: what an API call that changes state did, who
asked, and how it ended. The SQL differs only in its placeholders."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jobd.models import iso_ms

COLUMNS = ("at", "token", "remote", "action", "job", "run_id", "target", "status", "outcome", "detail", "request_id")


@dataclasses.dataclass(slots=True)  # not frozen: one is made per audited call, and frozen ones build slower
class AuditRecord:
    at: int  # epoch ms
    token: str | None  # the token's name; None with auth off
    remote: str | None
    action: str  # trigger, cancel, retry, pause, resume, backfill, snooze, ticket
    target: str  # the request's path
    status: int  # the HTTP status of the answer
    outcome: str  # "ok", or the problem's slug (overlap, job-not-found, ...)
    job: str | None = None
    run_id: int | None = None
    detail: str | None = None
    request_id: str | None = None
    id: int | None = None  # given by the store

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in COLUMNS)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **{column: getattr(self, column) for column in COLUMNS}, "at": iso_ms(self.at)}


@dataclasses.dataclass(frozen=True, slots=True)
class AuditFilter:
    since: int | None = None  # at >= since
    until: int | None = None  # at < until
    token: str | None = None
    actions: tuple[str, ...] = ()
    job: str | None = None
    jobs: tuple[str, ...] | None = None  # a scoped token's jobs: records of these only
    before_id: int | None = None  # the page's cursor


def record_of(row: Sequence[Any]) -> AuditRecord:
    values = dict(zip(("id", *COLUMNS), row, strict=True))
    return AuditRecord(**values)


def where(f: AuditFilter, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause (`mark` is the driver's placeholder) and its arguments, cursor included."""
    clauses: list[str] = []
    args: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        clauses.append(clause.replace("?", mark))
        args.extend(values)

    if f.since is not None:
        add("at >= ?", f.since)
    if f.until is not None:
        add("at < ?", f.until)
    if f.token is not None:
        add("token = ?", f.token)
    if f.actions:
        add(f"action IN ({', '.join('?' * len(f.actions))})", *f.actions)
    if f.job is not None:
        add("job = ?", f.job)
    if f.jobs is not None:
        add(f"job IN ({', '.join('?' * len(f.jobs))})" if f.jobs else "0 = 1", *f.jobs)
    if f.before_id is not None:
        add("id < ?", f.before_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def page_sql(f: AuditFilter, mark: str, limit: int) -> tuple[str, list[Any], str, list[Any]]:
    """The page (newest first) and the count of every record matching (the cursor aside)."""
    clause, args = where(f, mark)
    counted, count_args = where(dataclasses.replace(f, before_id=None), mark)
    page = f"SELECT id, {', '.join(COLUMNS)} FROM audit{clause} ORDER BY id DESC LIMIT {int(limit)}"
    return page, args, f"SELECT count(*) FROM audit{counted}", count_args


def insert_sql(mark: str) -> str:
    return f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"


# SQLite's group commit writes its records as one JSON array, as it writes runs (see
# store.sqlite_rows.upsert): (one row, a JSON array of rows).
SQLITE_INSERTS = (
    insert_sql("?"),
    f"INSERT INTO audit ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(COLUMNS)))
    + " FROM json_each(?)",
)
