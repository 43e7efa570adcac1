"""The store's writing connection, on a thread of its own, where a whole transaction is one call.

Through aiosqlite every statement, and the commit, was a trip to its thread and back (a queue, a
future, a wake-up of the event loop through its self-pipe): two or three per group commit, and a
busy HTTP daemon commits every few runs. Here the event loop hands the thread one function that
runs the transaction's statements and commits (or rolls back), and waits for it once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WriterThread:
    def __init__(self, path: Path, *, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobd-store-writer")
        self._conn = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        # sqlite3's implicit transactions: the first write begins one, commit() ends it.
        conn = sqlite3.connect(self.path)
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._call(conn.close)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the thread and commit; roll back if it raises."""
        conn = self._conn
        assert conn is not None

        def run() -> T:
            try:
                result = work(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        return await self._call(run)

    async def _call(self, fn: Callable[[], T]) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
