"""A SQLite connection on a thread of its own: transactions commit or roll back whole, and the
store reaches SQLite through two of them only (its writer and its reader)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from jobd.store import RunFilter, SQLiteStore
from jobd.store.sqlite_thread import ConnectionThread


def new_store_threads(before: set[threading.Thread]) -> list[str]:
    """The names of jobd's threads started since `before` (a store an earlier test left closing
    may still have its own)."""
    return sorted(
        thread.name.rpartition("_")[0]
        for thread in set(threading.enumerate()) - before
        if thread.name.startswith("jobd-")
    )


async def test_a_transaction_commits_whole_or_not_at_all(tmp_path):
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (n INTEGER NOT NULL)")
    conn = ConnectionThread(path, name="writer")
    await conn.open()
    try:
        await conn.transaction(lambda db: db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]))

        def half_then_fail(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO t VALUES (3)")
            db.execute("INSERT INTO t VALUES (NULL)")

        with pytest.raises(sqlite3.IntegrityError):
            await conn.transaction(half_then_fail)
        # Another connection sees what was committed, and only that.
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
        assert await conn.fetchall("SELECT COUNT(*) FROM t") == [(2,)]
    finally:
        await conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await conn.fetchall("SELECT 1")


async def test_the_store_reaches_sqlite_through_its_writer_and_its_reader_only(tmp_path):
    before = set(threading.enumerate())
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    try:
        assert new_store_threads(before) == ["jobd-store-reader", "jobd-store-writer"]
        await store.run_stats(first_day=0, last_day=1)
        await store.list_runs(RunFilter(), limit=10, offset=0)
        assert new_store_threads(before) == ["jobd-store-reader", "jobd-store-writer"]
    finally:
        await store.close()
