"""The cluster's schema: migrations applied in order under an advisory lock, so any number of
nodes may start at once; `schema_version` records the last one applied.

Times are epoch milliseconds (bigint) as in the SQLite store, so a run's row means the same in
both and `copy-store` moves it as it is; `jobd_now_ms()` is the database's clock, the one every
node agrees on (heartbeats, readiness of a run's run_after).
"""

from __future__ import annotations

from psycopg import AsyncConnection, Connection
from psycopg.rows import TupleRow

from jobd.store.base import StoreError
from jobd.store.postgres.locks import LOCK_GROUP, LOCK_JOB, LOCK_MIGRATE, LOCK_REAPER, LOCK_RETENTION
from jobd.store.postgres.migrations import MIGRATIONS

__all__ = [
    "LOCK_GROUP",
    "LOCK_JOB",
    "LOCK_MIGRATE",
    "LOCK_REAPER",
    "LOCK_RETENTION",
    "MIGRATIONS",
    "migrate",
    "migrate_sync",
]

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_MIGRATE[0]}, {LOCK_MIGRATE[1]})"
_READ_VERSION = "SELECT COALESCE(max(version), 0) FROM schema_version"
_WRITE_VERSION = "DELETE FROM schema_version; INSERT INTO schema_version VALUES ({})"


def _check(version: int) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(f"the database has schema version {version}, newer than this jobd knows ({len(MIGRATIONS)})")


async def migrate(conn: AsyncConnection[TupleRow]) -> int:
    """Bring the schema up to date in one transaction; returns the version now in force.
    Nodes starting together wait for the first one's transaction, then find nothing to do."""
    async with conn.transaction():
        await conn.execute(_LOCK)
        await conn.execute(_VERSION_TABLE)
        row = await (await conn.execute(_READ_VERSION)).fetchone()
        version = int(row[0]) if row else 0
        _check(version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script.encode())
            await conn.execute(_WRITE_VERSION.format(number).encode())
    return len(MIGRATIONS)


def migrate_sync(conn: Connection[TupleRow]) -> int:
    """migrate() for the command line."""
    with conn.transaction():
        conn.execute(_LOCK)
        conn.execute(_VERSION_TABLE)
        row = conn.execute(_READ_VERSION).fetchone()
        version = int(row[0]) if row else 0
        _check(version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script.encode())
            conn.execute(_WRITE_VERSION.format(number).encode())
    return len(MIGRATIONS)
