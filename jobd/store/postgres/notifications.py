"""The notifications table on PostgreSQL: inserted in a run's transaction (one statement for a
batch), claimed by any node with FOR UPDATE SKIP LOCKED under a lease, so each is delivered by
one node at a time, and again by another only once the lease of a node that died has run out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobd.store.notifications import COLUMNS, NewNotification, Notification, row_to_notification
from jobd.store.postgres.runs import Conn

_SELECT = ", ".join(COLUMNS)
_INSERT = (
    "INSERT INTO notifications (job, event, notifier, run_id, payload, status, created_at, next_attempt_at, "
    "updated_at) SELECT n.job, n.event, n.notifier, n.run_id, n.payload, "
    "CASE WHEN COALESCE(s.snoozed_until, 0) > n.created_at THEN 'snoozed' ELSE 'pending' END, "
    "n.created_at, n.created_at, n.created_at "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::text[], %s::int8[]) "
    "AS n(job, event, notifier, run_id, payload, created_at) "
    "LEFT JOIN job_state s ON s.job = n.job"
)
_CLAIM = (
    "WITH c AS MATERIALIZED (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= %s "
    "AND COALESCE(lease_until, 0) <= %s ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
    f"UPDATE notifications n SET lease_until = %s FROM c WHERE n.id = c.id RETURNING {_SELECT.replace('id,', 'n.id,', 1)}"
)
RECORD = (
    "UPDATE notifications SET attempts = attempts + 1, status = %s, last_error = COALESCE(%s, last_error), "
    "next_attempt_at = %s, delivered_at = %s, updated_at = %s, lease_until = NULL WHERE id = %s"
)
SNOOZE = (
    "INSERT INTO job_state (job, snoozed_until) VALUES (%s, %s) "
    "ON CONFLICT (job) DO UPDATE SET snoozed_until = excluded.snoozed_until"
)
TRIM = (
    "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
    "WHERE status <> 'pending' AND updated_at < %s LIMIT %s)"
)


async def insert(conn: Conn, items: Sequence[NewNotification]) -> None:
    """In the caller's transaction: one statement, whatever the number."""
    if not items:
        return
    columns: list[list[Any]] = [[], [], [], [], [], []]
    for item in items:
        for column, value in zip(columns, item.row()):
            column.append(value)
    await conn.execute(_INSERT, columns)


async def claim(conn: Conn, now: int, lease_until: int, limit: int) -> list[Notification]:
    cur = await conn.execute(_CLAIM, (now, now, limit, lease_until))
    return sorted((row_to_notification(row) for row in await cur.fetchall()), key=lambda n: n.id)
