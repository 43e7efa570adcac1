"""The notifications queue of a cluster (imported only in cluster mode: a single node never loads
the PostgreSQL driver)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from jobd.notify.queue import record_args
from jobd.store import notifications as rows
from jobd.store.notifications import NewNotification, Notification
from jobd.store.postgres import notifications as pg
from jobd.store.postgres.runs import Conn


class PostgresQueue:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    async def start(self) -> None:
        """Leases are left to run out: another node may be delivering them."""

    async def _execute(self, sql: str, args: Sequence[Any]) -> list[TupleRow]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall() if cur.description else []

    async def add(self, items: Sequence[NewNotification]) -> None:
        async with self.pool.connection() as conn:
            await pg.insert(conn, items)

    async def claim(self, now: int, lease_until: int, limit: int) -> list[Notification]:
        async with self.pool.connection() as conn:
            return await pg.claim(conn, now, lease_until, limit)

    async def record(
        self, notification_id: int, *, status: str, error: str | None, next_attempt_at: int | None, now: int
    ) -> None:
        await self._execute(pg.RECORD, record_args(notification_id, status, error, next_attempt_at, now))

    async def release(self, ids: Sequence[int]) -> None:
        await self._execute("UPDATE notifications SET lease_until = NULL WHERE id = ANY(%s)", (list(ids),))

    async def page(
        self,
        *,
        job: str | None,
        statuses: Sequence[str],
        before_id: int | None,
        limit: int,
        jobs: Sequence[str] | None = None,
    ) -> list[Notification]:
        sql, args = rows.list_query("%s", job, statuses, before_id, limit, jobs)
        return [rows.row_to_notification(row) for row in await self._execute(sql, args)]

    async def snooze(self, job: str, until: int | None) -> None:
        await self._execute(pg.SNOOZE, (job, until))

    async def snoozes(self) -> dict[str, int]:
        return {job: int(until) for job, until in await self._execute(rows.SNOOZES, ())}

    async def trim(self, *, before: int, limit: int) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(pg.TRIM, (before, limit))
            return max(0, cur.rowcount)
