"""The cluster's schema: applied once however many nodes start at the same moment; a database
from a newer jobd is refused; the throwaway server can be stopped and started mid-test."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import psycopg
import pytest

from jobd.store.base import StoreError
from jobd.store.postgres import connect, connect_sync
from jobd.store.postgres.schema import MIGRATIONS, migrate, migrate_sync

if TYPE_CHECKING:
    from tests.postgres import PgServer


async def test_migrations_run_concurrently_are_applied_once(pg_dsn: str) -> None:
    connections = [await connect(pg_dsn) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(migrate(conn) for conn in connections))
        assert versions == [len(MIGRATIONS)] * 3
        cur = await connections[0].execute("SELECT version FROM schema_version")
        assert await cur.fetchall() == [(len(MIGRATIONS),)]
        cur = await connections[0].execute("SELECT count(*) FROM pg_proc WHERE proname = 'jobd_claim'")
        assert await cur.fetchone() == (1,)
    finally:
        for conn in connections:
            await conn.close()
    with connect_sync(pg_dsn) as blocking:
        assert migrate_sync(blocking) == len(MIGRATIONS)  # nothing left to do


def test_a_database_from_a_newer_jobd_is_refused(pg_dsn: str) -> None:
    with connect_sync(pg_dsn) as conn:
        migrate_sync(conn)
        conn.execute("UPDATE schema_version SET version = version + 1")
        try:
            with pytest.raises(StoreError, match="newer than this jobd knows"):
                migrate_sync(conn)
        finally:
            conn.execute("UPDATE schema_version SET version = version - 1")


def test_the_server_can_be_stopped_and_started_mid_test(pg_dsn: str, pg_restartable: PgServer) -> None:
    with connect_sync(pg_dsn) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    pg_restartable.stop()
    with pytest.raises(psycopg.OperationalError):
        connect_sync(pg_dsn, connect_timeout=2)
    pg_restartable.start()
    with connect_sync(pg_dsn) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
