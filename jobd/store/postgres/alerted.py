"""The alerts a cluster has sent (late fires, long runs): a key each, claimed by one node only
(imported only in cluster mode)."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from jobd.store.postgres.runs import Conn

_CLAIM = "INSERT INTO alerts_sent (key, at) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING RETURNING key"
_TRIM = "DELETE FROM alerts_sent WHERE at < %s"


class PostgresAlerted:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    async def claim(self, key: str, now: int) -> bool:
        """True for the one node (of all, ever) that claims `key` first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CLAIM, (key, now))
            return await cur.fetchone() is not None

    async def trim(self, before: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_TRIM, (before,))
