"""Schema migrations, applied in order at start; PRAGMA user_version records the last one."""

from __future__ import annotations

import aiosqlite

_STATUSES = "'PENDING', 'PROCESSING', 'COMPLETED', 'PARTIAL', 'FAILED', 'CANCELLED'"
_SOURCES = "'cron', 'api', 'manual', 'retry', 'catchup'"

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        progress REAL NOT NULL DEFAULT 0,
        message TEXT,
        triggered_by TEXT NOT NULL CHECK (triggered_by IN ({_SOURCES})),
        params TEXT NOT NULL DEFAULT '{{}}',
        attempt INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER NOT NULL DEFAULT 1,
        scheduled_for INTEGER,
        run_after INTEGER,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        duration_ms INTEGER,
        counts_total INTEGER,
        counts_success INTEGER NOT NULL DEFAULT 0,
        counts_failed INTEGER NOT NULL DEFAULT 0,
        counts_skipped INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        exit_code INTEGER,
        retry_of INTEGER,
        log_tail TEXT NOT NULL DEFAULT '',
        updated_at INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_job ON runs (job, id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX runs_trigger ON runs (triggered_by, id);
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE job_state (
        job TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        last_fire_at INTEGER,
        skipped_fires INTEGER NOT NULL DEFAULT 0,
        last_skipped_at INTEGER,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_run_id INTEGER
    );
    CREATE TABLE idempotency (
        job TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (job, key)
    );
    """,
)


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema up to date; returns the version now in force."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the store has schema version {version}, newer than this jobd knows ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    return len(MIGRATIONS)
