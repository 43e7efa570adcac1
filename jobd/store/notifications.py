"""Notifications as rows: the record, and the SQLite side of their queue (the table is migration
in store/migrations.py; PostgreSQL's is store/postgres/notifications.py).

A notification is inserted in the transaction of the change that caused it (a run's start or
end), `snoozed` at once when its job is snoozed then, else `pending`. Delivery claims due rows
under a lease (`lease_until`), so a process that dies mid-delivery leaves them to be claimed again
when it runs out: at least once, never lost.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from jobd.models import iso_ms

STATUSES = ("pending", "delivered", "failed", "snoozed")
COLUMNS = (
    "id",
    "job",
    "event",
    "notifier",
    "run_id",
    "payload",
    "status",
    "attempts",
    "last_error",
    "created_at",
    "next_attempt_at",
    "delivered_at",
    "updated_at",
)
_SELECT = ", ".join(COLUMNS)


@dataclasses.dataclass(frozen=True, slots=True)
class NewNotification:
    """A notification to insert with the change that caused it."""

    job: str
    event: str
    notifier: str
    run_id: int | None
    payload: dict[str, Any]
    created_at: int

    def row(self) -> tuple[Any, ...]:
        return (self.job, self.event, self.notifier, self.run_id, json.dumps(self.payload), self.created_at)


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    id: int
    job: str
    event: str
    notifier: str
    run_id: int | None
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    created_at: int
    next_attempt_at: int | None
    delivered_at: int | None
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "event": self.event,
            "notifier": self.notifier,
            "run_id": self.run_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": iso_ms(self.created_at),
            "next_attempt_at": iso_ms(self.next_attempt_at) if self.status == "pending" else None,
            "delivered_at": iso_ms(self.delivered_at),
            "updated_at": iso_ms(self.updated_at),
            "payload": self.payload,
        }


def row_to_notification(row: Sequence[Any]) -> Notification:
    payload = row[5]
    return Notification(
        id=int(row[0]),
        job=row[1],
        event=row[2],
        notifier=row[3],
        run_id=row[4],
        payload=json.loads(payload) if isinstance(payload, str) else payload,
        status=row[6],
        attempts=int(row[7]),
        last_error=row[8],
        created_at=int(row[9]),
        next_attempt_at=row[10],
        delivered_at=row[11],
        updated_at=int(row[12]),
    )


# -- SQLite ----------------------------------------------------------------------------------------

# ?1 job, ?2 event, ?3 notifier, ?4 run_id, ?5 payload, ?6 created_at
INSERT_SQLITE = (
    "INSERT INTO notifications (job, event, notifier, run_id, payload, status, attempts, created_at, "
    "next_attempt_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, "
    "CASE WHEN COALESCE((SELECT snoozed_until FROM job_state WHERE job = ?1), 0) > ?6 "
    "THEN 'snoozed' ELSE 'pending' END, 0, ?6, ?6, ?6)"
)


def insert_statement(items: Sequence[NewNotification]) -> tuple[str, list[tuple[Any, ...]], bool]:
    """The group commit's statement for these (sqlite_rows.Statement)."""
    return INSERT_SQLITE, [item.row() for item in items], True


def sqlite_claim(conn: sqlite3.Connection, now: int, lease_until: int, limit: int) -> list[Notification]:
    rows = conn.execute(
        f"UPDATE notifications SET lease_until = ? WHERE id IN (SELECT id FROM notifications "
        f"WHERE status = 'pending' AND next_attempt_at <= ? AND COALESCE(lease_until, 0) <= ? "
        f"ORDER BY next_attempt_at, id LIMIT ?) RETURNING {_SELECT}",
        (lease_until, now, now, limit),
    ).fetchall()
    return sorted((row_to_notification(row) for row in rows), key=lambda n: n.id)


def sqlite_release_all(conn: sqlite3.Connection) -> None:
    """At start: no other process delivers from this store (it is locked), so no lease holds."""
    conn.execute("UPDATE notifications SET lease_until = NULL WHERE status = 'pending' AND lease_until IS NOT NULL")


RECORD = (
    "UPDATE notifications SET attempts = attempts + 1, status = ?, last_error = COALESCE(?, last_error), "
    "next_attempt_at = ?, delivered_at = ?, updated_at = ?, lease_until = NULL WHERE id = ?"
)


def sqlite_record(conn: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    conn.execute(RECORD, args)


def list_query(
    placeholder: str,
    job: str | None,
    statuses: Sequence[str],
    before_id: int | None,
    limit: int,
    jobs: Sequence[str] | None = None,
) -> tuple[str, list[Any]]:
    """`jobs`: only these jobs' (a token limited to jobs); None: every job's."""
    clauses: list[str] = []
    args: list[Any] = []
    if jobs is not None:
        clauses.append(f"job IN ({', '.join([placeholder] * len(jobs))})" if jobs else "1 = 0")
        args.extend(jobs)
    if job is not None:
        clauses.append(f"job = {placeholder}")
        args.append(job)
    if statuses:
        clauses.append(f"status IN ({', '.join([placeholder] * len(statuses))})")
        args.extend(statuses)
    if before_id is not None:
        clauses.append(f"id < {placeholder}")
        args.append(before_id)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return f"SELECT {_SELECT} FROM notifications{where} ORDER BY id DESC LIMIT {placeholder}", [*args, limit]


SNOOZE_SQLITE = (
    "INSERT INTO job_state (job, snoozed_until) VALUES (?, ?) "
    "ON CONFLICT(job) DO UPDATE SET snoozed_until = excluded.snoozed_until"
)
SNOOZES = "SELECT job, snoozed_until FROM job_state WHERE snoozed_until IS NOT NULL"
TRIM_SQLITE = (
    "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
    "WHERE status <> 'pending' AND updated_at < ? LIMIT ?)"
)
