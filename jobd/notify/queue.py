"""The notifications table of either store, behind one small interface: the delivery loop,
the API and retention use it; the inserts that go with a run's change are the stores' own."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from jobd.store import SQLiteStore
from jobd.store import notifications as rows
from jobd.store.notifications import NewNotification, Notification


class Queue(Protocol):
    async def start(self) -> None:
        """Before the first claim: drop the leases no process can hold any more, where it knows."""
        ...

    async def add(self, items: Sequence[NewNotification]) -> None:
        """Notifications of their own (late, long, a test): committed at once."""
        ...

    async def claim(self, now: int, lease_until: int, limit: int) -> list[Notification]: ...

    async def record(
        self, notification_id: int, *, status: str, error: str | None, next_attempt_at: int | None, now: int
    ) -> None: ...

    async def release(self, ids: Sequence[int]) -> None:
        """Claimed ones this process will not deliver after all (it is stopping)."""
        ...

    async def page(
        self,
        *,
        job: str | None,
        statuses: Sequence[str],
        before_id: int | None,
        limit: int,
        jobs: Sequence[str] | None = None,
    ) -> list[Notification]: ...

    async def snooze(self, job: str, until: int | None) -> None: ...

    async def snoozes(self) -> dict[str, int]: ...

    async def trim(self, *, before: int, limit: int) -> int: ...


def record_args(
    notification_id: int, status: str, error: str | None, next_attempt_at: int | None, now: int
) -> tuple[Any, ...]:
    return (status, error, next_attempt_at, now if status == "delivered" else None, now, notification_id)


class SQLiteQueue:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def start(self) -> None:
        await self.store.write_with(rows.sqlite_release_all)

    async def add(self, items: Sequence[NewNotification]) -> None:
        sql, args, _ = rows.insert_statement(items)
        await self.store.write_with(lambda conn: conn.executemany(sql, args))

    async def claim(self, now: int, lease_until: int, limit: int) -> list[Notification]:
        return await self.store.write_with(
            functools.partial(rows.sqlite_claim, now=now, lease_until=lease_until, limit=limit)
        )

    async def record(
        self, notification_id: int, *, status: str, error: str | None, next_attempt_at: int | None, now: int
    ) -> None:
        args = record_args(notification_id, status, error, next_attempt_at, now)
        await self.store.write_with(functools.partial(rows.sqlite_record, args=args))

    async def release(self, ids: Sequence[int]) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE notifications SET lease_until = NULL WHERE id = ?", [(i,) for i in ids])

        await self.store.write_with(release)

    async def page(
        self,
        *,
        job: str | None,
        statuses: Sequence[str],
        before_id: int | None,
        limit: int,
        jobs: Sequence[str] | None = None,
    ) -> list[Notification]:
        sql, args = rows.list_query("?", job, statuses, before_id, limit, jobs)
        return [rows.row_to_notification(row) for row in await self.store.fetch(sql, args)]

    async def snooze(self, job: str, until: int | None) -> None:
        await self.store.write_with(lambda conn: conn.execute(rows.SNOOZE_SQLITE, (job, until)))

    async def snoozes(self) -> dict[str, int]:
        return {job: int(until) for job, until in await self.store.fetch(rows.SNOOZES)}

    async def trim(self, *, before: int, limit: int) -> int:
        def trim(conn: sqlite3.Connection) -> int:
            return max(0, conn.execute(rows.TRIM_SQLITE, (before, limit)).rowcount)

        return await self.store.write_with(trim)
