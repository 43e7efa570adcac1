"""The two stores side by side: the same history written into a SQLite store and into
PostgreSQL, so a test can ask both the same question and compare the answers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from jobd.models import Run
from jobd.store import SQLiteStore
from jobd.store.base import IdempotencyKey, JobState, StoreReads
from jobd.store.postgres import connect, open_pool
from jobd.store.postgres.cluster import save_job_state
from jobd.store.postgres.runs import insert_runs, save_idempotent
from jobd.store.postgres.store import PostgresStore


@dataclasses.dataclass
class Pair:
    sqlite: SQLiteStore
    postgres: PostgresStore
    dsn: str

    async def load(
        self, runs: Sequence[Run], states: Sequence[JobState] = (), keys: Sequence[IdempotencyKey] = ()
    ) -> None:
        """Give the runs ids 1, 2, ... (in order) and write them, and the rest, into both stores."""
        for run in runs:
            run.id = self.sqlite.allocate_run_id()
        await self.sqlite.write(runs, states, keys)
        async with await connect(self.dsn) as conn, conn.transaction():
            await insert_runs(conn, runs)
            for state in states:
                await save_job_state(conn, state)
            for key in keys:
                await save_idempotent(conn, key)
            await conn.execute("SELECT setval('runs_id_seq', GREATEST((SELECT max(id) FROM runs), 1))")

    async def write(self, runs: Sequence[Run]) -> None:
        """Rewrite runs already loaded (their changed state) in both stores."""
        await self.sqlite.write(runs)
        async with await connect(self.dsn) as conn, conn.transaction():
            await conn.execute("DELETE FROM runs WHERE id = ANY(%s)", ([run.id for run in runs],))
            await insert_runs(conn, runs)


async def open_pair(tmp_path: Path, dsn: str) -> AsyncIterator[Pair]:
    sqlite = SQLiteStore(tmp_path / "jobd.db")
    postgres = PostgresStore(open_pool(dsn, min_size=1, max_size=4))
    await sqlite.open()
    await postgres.open()
    try:
        yield Pair(sqlite, postgres, dsn)
    finally:
        await postgres.close()
        await sqlite.close()


def as_reads(store: PostgresStore) -> StoreReads:
    """Where the type checker confirms that PostgresStore is a StoreReads."""
    return store
