"""A store with a long history, made directly with SQLite through jobd's own migrations: the
first one (the runs table and its indexes), every run inserted in one transaction, then the rest
of them, so that migration 2 builds the statistics rollups from the rows in one pass, as it did
for the stores that existed when it was written (and several times faster than its triggers
would, row by row).

The runs are finished ones (as after a clean stop), spread over the last `days` days across all
`jobs`, with the status, trigger and duration mix of tests/rungen.py. Every job gets its job_state
row (last run, last fire), so start-up loads what a daemon with that history would.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jobd.models import Counts, Run, RunStatus, TriggerSource
from jobd.store.base import RUN_COLUMNS
from jobd.store.migrations import DAY_MS, MIGRATIONS
from jobd.store.sqlite_rows import run_to_row

STATUS_WEIGHTS = {RunStatus.COMPLETED: 70, RunStatus.PARTIAL: 8, RunStatus.FAILED: 16, RunStatus.CANCELLED: 6}
SOURCE_WEIGHTS = {
    TriggerSource.CRON: 50,
    TriggerSource.API: 25,
    TriggerSource.MANUAL: 10,
    TriggerSource.RETRY: 10,
    TriggerSource.CATCHUP: 5,
}
CHUNK = 50_000


def generate(
    count: int, *, now_ms: int, days: int, jobs: Sequence[str], seed: int = 1
) -> Iterator[list[tuple[Any, ...]]]:
    """Store rows of `count` finished runs, oldest first (ids 1..count), in chunks."""
    rng = random.Random(seed)
    created = sorted(now_ms - rng.randrange(days * DAY_MS) for _ in range(count))
    statuses, status_weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    sources, source_weights = list(SOURCE_WEIGHTS), list(SOURCE_WEIGHTS.values())
    for start in range(0, count, CHUNK):
        chunk = created[start : start + CHUNK]
        status_of = rng.choices(statuses, status_weights, k=len(chunk))
        source_of = rng.choices(sources, source_weights, k=len(chunk))
        rows = []
        for offset, at in enumerate(chunk):
            started = at + rng.randrange(0, 2000)
            duration = rng.choice((rng.randrange(0, 50), rng.randrange(0, 5000), rng.randrange(0, 300_000), 1000))
            run = Run(
                id=start + offset + 1,
                job=rng.choice(jobs),
                status=status_of[offset],
                triggered_by=source_of[offset],
                created_at=at,
                updated_at=started + duration,
                started_at=started,
                finished_at=started + duration,
                progress=100.0,
            )
            if rng.random() < 0.7:
                total = rng.randrange(0, 100)
                failed = rng.randrange(0, 5)
                run.counts = Counts(
                    total=total, success=max(0, total - failed), failed=failed, skipped=rng.randrange(0, 3)
                )
            rows.append(run_to_row(run))
        yield rows


def _migrate(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Apply migrations first..last (1-based) as jobd.store.migrations.migrate() does."""
    for number in range(first, last + 1):
        conn.executescript(f"BEGIN; {MIGRATIONS[number - 1]}; PRAGMA user_version = {number}; COMMIT;")


def build(path: Path, *, runs: int, jobs: Sequence[str], days: int, now_ms: int) -> dict[str, float]:
    """Create the store at `path` (which must not exist); returns how long the steps took."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Nothing here needs to survive a crash: the file is thrown away if this fails.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB: the indexes stay in memory
        _migrate(conn, 1, 1)
        conn.execute("BEGIN")
        insert = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
        last_run: dict[str, int] = {}
        job_index = RUN_COLUMNS.index("job")
        for rows in generate(runs, now_ms=now_ms, days=days, jobs=jobs):
            conn.executemany(insert, rows)
            for row in rows:
                last_run[row[job_index]] = row[0]
        conn.executemany(
            "INSERT INTO job_state (job, paused, last_fire_at, skipped_fires, last_skipped_at, "
            "consecutive_failures, last_run_id) VALUES (?, 0, ?, 0, NULL, 0, ?)",
            [(job, now_ms, last_run.get(job)) for job in jobs],
        )
        conn.execute("COMMIT")
        inserted = time.perf_counter()
        _migrate(conn, 2, len(MIGRATIONS))
        conn.execute("PRAGMA journal_mode = WAL")  # what jobd would have left behind
    finally:
        conn.close()
    done = time.perf_counter()
    return {
        "insert_s": round(inserted - started, 1),
        "migrations_s": round(done - inserted, 1),
        "size_mb": round(path.stat().st_size / 1e6),
    }
