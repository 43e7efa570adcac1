"""The cluster store on PostgreSQL (psycopg 3): the schema and the SQL operations that several
jobd nodes share. Each operation is a small function taking a connection; transactions are the
caller's, so a change and its event commit together.

    schema   migrate(), migrate_sync(): the schema, under an advisory lock
    runs     runs: create, admit, claim, the owner's writes (claim token), cancel requests
    cluster  cron fires, job state, nodes and heartbeats, declaring dead nodes
    events   the feed of committed changes, and payload-free notifications
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool


def open_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 8, idle_in_transaction_s: float | None = None, **kwargs: Any
) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    """A pool of autocommit connections (a claim is its own transaction; grouped writes open
    one with `conn.transaction()`). Not opened yet: `await pool.open(wait=True)`.

    `idle_in_transaction_s`: PostgreSQL ends a transaction of the pool's that waits on its client
    that long. The holder is stuck (a paused process), and its row locks, advisory locks and
    snapshot would otherwise hold up the other nodes for as long as it stays so."""
    configure = None
    if idle_in_transaction_s is not None:
        timeout_ms = str(round(idle_in_transaction_s * 1000))

        async def configure(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (timeout_ms,))

    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, **kwargs},
        configure=configure,
        name="jobd",
    )


async def connect(dsn: str, **kwargs: Any) -> AsyncConnection[TupleRow]:
    """One autocommit connection outside the pool (LISTEN needs a dedicated one)."""
    return await AsyncConnection.connect(dsn, autocommit=True, **kwargs)


class OwnConnection:
    """One autocommit connection kept for a task that must not queue behind the pool (the
    heartbeat: a node whose pool is busy is still alive). Opened on first use and again after
    it broke; use as `async with own() as conn:`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: AsyncConnection[TupleRow] | None = None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await connect(self.dsn)
        try:
            yield self._conn
        except BaseException:
            await self.close()  # its state is unknown (a timeout may have cut a statement short)
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def connect_sync(dsn: str, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    """A blocking connection, for the command line (`jobd migrate`, `jobd copy-store`)."""
    return psycopg.connect(dsn, autocommit=True, **kwargs)
