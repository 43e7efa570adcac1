"""A SQLite connection on a thread of its own: the one way the store reaches SQLite.

The store has two: the writer, whose calls are whole transactions (a group commit, a retention
delete), and the reader, whose calls are queries. The event loop hands the thread one function
that does all its statements, and awaits it once: a statement at a time would be a trip to the
thread and back (a queue, a future, a wake-up of the loop) per statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConnectionThread:
    def __init__(self, path: Path, *, name: str, pragmas: Sequence[str] = (), autocommit: bool = False) -> None:
        """`autocommit`: each statement is its own transaction (a reader's); otherwise sqlite3's
        implicit transactions, which the first write begins and transaction() ends."""
        self.path = path
        self.name = name
        self.pragmas = tuple(pragmas)
        self.autocommit = autocommit
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"jobd-store-{self.name}")
        try:
            self._conn = await self._call(self._connect)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None if self.autocommit else "DEFERRED")
        try:
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await self._call(conn.close)
        finally:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on the thread, as it is: for reads."""
        conn = self._connection()
        return await self._call(lambda: work(conn))

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on the thread, then commit; roll back if it raises."""
        conn = self._connection()

        def run() -> T:
            try:
                result = work(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        return await self._call(run)

    async def fetchall(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        conn = self._connection()
        return await self._call(lambda: conn.execute(sql, args).fetchall())

    async def set_trace_callback(self, callback: Callable[[str], object] | None) -> None:
        """sqlite3's statement trace, on this connection (see which statements jobd sends)."""
        conn = self._connection()
        await self._call(lambda: conn.set_trace_callback(callback))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"the store's {self.name} connection is closed")
        return self._conn

    async def _call(self, fn: Callable[[], T]) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
