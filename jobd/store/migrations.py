"""Schema migrations, applied in order at start; PRAGMA user_version records the last one."""

from __future__ import annotations

import sqlite3

from jobd.models import DAY_MS
from jobd.store.base import StoreError

_STATUSES = "'PENDING', 'PROCESSING', 'COMPLETED', 'PARTIAL', 'FAILED', 'CANCELLED'"
_SOURCES = "'cron', 'api', 'manual', 'retry', 'catchup'"
_ACTIVE = "'PENDING', 'PROCESSING'"

# The aggregate of finished runs per (job, status, triggered_by), in run_days also per UTC day.
# What migrations 2 and 3 are made of (down to _all_jobs_remove): changing any of it means a new
# migration, never an edit.
_KEY_AND_MEASURES = """status TEXT NOT NULL,
        triggered_by TEXT NOT NULL,
        runs INTEGER NOT NULL,
        timed INTEGER NOT NULL,
        duration_sum INTEGER NOT NULL,
        items_total INTEGER NOT NULL,
        items_success INTEGER NOT NULL,
        items_failed INTEGER NOT NULL,
        items_skipped INTEGER NOT NULL"""
_ROLLUP_COLUMNS = f"""job TEXT NOT NULL,
        {_KEY_AND_MEASURES}"""
_ROLLUP_AGGREGATES = (
    "job, status, triggered_by, COUNT(*), COUNT(duration_ms), COALESCE(SUM(duration_ms), 0), "
    "COALESCE(SUM(counts_total), 0), SUM(counts_success), SUM(counts_failed), SUM(counts_skipped)"
)
_SUMMED = ("runs", "timed", "duration_sum", "items_total", "items_success", "items_failed", "items_skipped")


def _measures(row: str) -> str:
    """What one finished run adds to a rollup row, in the order of the summed columns."""
    return (
        f"1, {row}.duration_ms IS NOT NULL, COALESCE({row}.duration_ms, 0), COALESCE({row}.counts_total, 0), "
        f"{row}.counts_success, {row}.counts_failed, {row}.counts_skipped"
    )


def _subtract(row: str) -> str:
    """Taking one run out of a rollup row."""
    return (
        f"runs = runs - 1, timed = timed - ({row}.duration_ms IS NOT NULL), "
        f"duration_sum = duration_sum - COALESCE({row}.duration_ms, 0), "
        f"items_total = items_total - COALESCE({row}.counts_total, 0), "
        f"items_success = items_success - {row}.counts_success, "
        f"items_failed = items_failed - {row}.counts_failed, "
        f"items_skipped = items_skipped - {row}.counts_skipped"
    )


_ADD = ", ".join(f"{col} = {col} + excluded.{col}" for col in _SUMMED)


def _rollup_values(row: str) -> str:
    return f"{row}.job, {row}.status, {row}.triggered_by, {_measures(row)}"


def _rollup_add(row: str) -> str:
    return (
        f"INSERT INTO run_days VALUES ({row}.created_at / {DAY_MS}, {_rollup_values(row)}) "
        f"ON CONFLICT DO UPDATE SET {_ADD}; "
        f"INSERT INTO run_totals VALUES ({_rollup_values(row)}) ON CONFLICT DO UPDATE SET {_ADD};"
    )


def _rollup_remove(row: str) -> str:
    key = f"job = {row}.job AND status = {row}.status AND triggered_by = {row}.triggered_by"
    day_key = f"day = {row}.created_at / {DAY_MS} AND {key}"
    return (
        f"UPDATE run_days SET {_subtract(row)} WHERE {day_key}; DELETE FROM run_days WHERE {day_key} AND runs = 0; "
        f"UPDATE run_totals SET {_subtract(row)} WHERE {key}; DELETE FROM run_totals WHERE {key} AND runs = 0;"
    )


def _all_jobs_add(row: str) -> str:
    return (
        f"INSERT INTO run_days_all VALUES ({row}.created_at / {DAY_MS}, {row}.status, {row}.triggered_by, "
        f"{_measures(row)}) ON CONFLICT DO UPDATE SET {_ADD};"
    )


def _all_jobs_remove(row: str) -> str:
    key = f"day = {row}.created_at / {DAY_MS} AND status = {row}.status AND triggered_by = {row}.triggered_by"
    return f"UPDATE run_days_all SET {_subtract(row)} WHERE {key}; DELETE FROM run_days_all WHERE {key} AND runs = 0;"


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
    # 2: statistics that stay fast on millions of runs. A finished run never changes again, so the
    # finished runs are also kept aggregated, by UTC day (`run_days`) and in all (`run_totals`), by
    # triggers: one upsert into each when a run finishes, a decrement when retention deletes it.
    # Active runs (PENDING, PROCESSING) are few and are counted from `runs` itself. The duration
    # indexes let a p95 be read by walking down from the longest run instead of sorting.
    f"""
    CREATE TABLE run_days (
        day INTEGER NOT NULL,
        {_ROLLUP_COLUMNS},
        PRIMARY KEY (day, job, status, triggered_by)
    ) WITHOUT ROWID;
    CREATE TABLE run_totals (
        {_ROLLUP_COLUMNS},
        PRIMARY KEY (job, status, triggered_by)
    ) WITHOUT ROWID;
    INSERT INTO run_days
        SELECT created_at / {DAY_MS}, {_ROLLUP_AGGREGATES} FROM runs
        WHERE status NOT IN ({_ACTIVE}) GROUP BY 1, job, status, triggered_by;
    INSERT INTO run_totals
        SELECT {_ROLLUP_AGGREGATES} FROM runs
        WHERE status NOT IN ({_ACTIVE}) GROUP BY job, status, triggered_by;
    CREATE TRIGGER runs_rollup_insert AFTER INSERT ON runs
    WHEN new.status NOT IN ({_ACTIVE}) BEGIN {_rollup_add("new")} END;
    CREATE TRIGGER runs_rollup_finish AFTER UPDATE OF status ON runs
    WHEN old.status IN ({_ACTIVE}) AND new.status NOT IN ({_ACTIVE}) BEGIN {_rollup_add("new")} END;
    CREATE TRIGGER runs_rollup_delete AFTER DELETE ON runs
    WHEN old.status NOT IN ({_ACTIVE}) BEGIN {_rollup_remove("old")} END;
    CREATE INDEX runs_duration ON runs (duration_ms, created_at) WHERE duration_ms IS NOT NULL;
    CREATE INDEX runs_job_duration ON runs (job, duration_ms, created_at) WHERE duration_ms IS NOT NULL;
    """,
    # 3: the finished runs of all jobs together, by UTC day. Unfiltered summaries and the totals and
    # timeline of the statistics read a few rows per day from it however many jobs there are:
    # run_days has a row per job and day, nearly one per run when there are thousands of jobs.
    # Kept by triggers of its own beside those of migration 2. Like migration 2, frozen once written.
    f"""
    CREATE TABLE run_days_all (
        day INTEGER NOT NULL,
        {_KEY_AND_MEASURES},
        PRIMARY KEY (day, status, triggered_by)
    ) WITHOUT ROWID;
    INSERT INTO run_days_all
        SELECT day, status, triggered_by, {", ".join(f"SUM({col})" for col in _SUMMED)} FROM run_days
        GROUP BY day, status, triggered_by;
    CREATE TRIGGER runs_rollup_all_insert AFTER INSERT ON runs
    WHEN new.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_add("new")} END;
    CREATE TRIGGER runs_rollup_all_finish AFTER UPDATE OF status ON runs
    WHEN old.status IN ({_ACTIVE}) AND new.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_add("new")} END;
    CREATE TRIGGER runs_rollup_all_delete AFTER DELETE ON runs
    WHEN old.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_remove("old")} END;
    """,
    # Why the job's last fire was skipped: 'overlap' (its policy refused it) or 'excluded' (its
    # calendars or active period left it out).
    "ALTER TABLE job_state ADD COLUMN last_skip_reason TEXT",
    # Notifications (jobd/store/notifications.py): each committed with the change that caused it,
    # delivered from here at least once; a job's snooze lives with its state.
    """
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        event TEXT NOT NULL,
        notifier TEXT NOT NULL,
        run_id INTEGER,
        payload TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'snoozed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        next_attempt_at INTEGER,
        delivered_at INTEGER,
        updated_at INTEGER NOT NULL,
        lease_until INTEGER
    );
    CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX notifications_job ON notifications (job, id);
    CREATE INDEX notifications_updated ON notifications (updated_at);
    ALTER TABLE job_state ADD COLUMN snoozed_until INTEGER;
    """,
    # 6: chains. A run made by another run's end is triggered_by 'chain' (a value the CHECK of
    # migration 1 refuses, and SQLite cannot alter a CHECK: the table is rebuilt, then its indexes
    # and the triggers of migrations 2 and 3, which went with the old table, are made again as they
    # were), knows its parent and its depth in the chain, and an ended run keeps what its end made.
    # The rows are copied before the triggers exist: the rollups already count them.
    f"""
    CREATE TABLE runs_chained (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        progress REAL NOT NULL DEFAULT 0,
        message TEXT,
        triggered_by TEXT NOT NULL CHECK (triggered_by IN ({_SOURCES}, 'chain')),
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
        updated_at INTEGER NOT NULL DEFAULT 0,
        parent_run_id INTEGER,
        chain_depth INTEGER NOT NULL DEFAULT 0,
        children TEXT
    );
    INSERT INTO runs_chained (
        id, job, status, progress, message, triggered_by, params, attempt, max_attempts, scheduled_for,
        run_after, created_at, started_at, finished_at, duration_ms, counts_total, counts_success,
        counts_failed, counts_skipped, result, error, exit_code, retry_of, log_tail, updated_at
    ) SELECT
        id, job, status, progress, message, triggered_by, params, attempt, max_attempts, scheduled_for,
        run_after, created_at, started_at, finished_at, duration_ms, counts_total, counts_success,
        counts_failed, counts_skipped, result, error, exit_code, retry_of, log_tail, updated_at
    FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_chained RENAME TO runs;
    CREATE INDEX runs_job ON runs (job, id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX runs_trigger ON runs (triggered_by, id);
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX runs_duration ON runs (duration_ms, created_at) WHERE duration_ms IS NOT NULL;
    CREATE INDEX runs_job_duration ON runs (job, duration_ms, created_at) WHERE duration_ms IS NOT NULL;
    CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE TRIGGER runs_rollup_insert AFTER INSERT ON runs
    WHEN new.status NOT IN ({_ACTIVE}) BEGIN {_rollup_add("new")} END;
    CREATE TRIGGER runs_rollup_finish AFTER UPDATE OF status ON runs
    WHEN old.status IN ({_ACTIVE}) AND new.status NOT IN ({_ACTIVE}) BEGIN {_rollup_add("new")} END;
    CREATE TRIGGER runs_rollup_delete AFTER DELETE ON runs
    WHEN old.status NOT IN ({_ACTIVE}) BEGIN {_rollup_remove("old")} END;
    CREATE TRIGGER runs_rollup_all_insert AFTER INSERT ON runs
    WHEN new.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_add("new")} END;
    CREATE TRIGGER runs_rollup_all_finish AFTER UPDATE OF status ON runs
    WHEN old.status IN ({_ACTIVE}) AND new.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_add("new")} END;
    CREATE TRIGGER runs_rollup_all_delete AFTER DELETE ON runs
    WHEN old.status NOT IN ({_ACTIVE}) BEGIN {_all_jobs_remove("old")} END;
    """,
    # The audit log: one row per state-changing API call (see jobd.store.audit). AUTOINCREMENT so
    # that an id is never given twice, even after retention deleted the newest rows: ids are cursors.
    """
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        token TEXT,
        remote TEXT,
        action TEXT NOT NULL,
        job TEXT,
        run_id INTEGER,
        target TEXT NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT,
        request_id TEXT
    );
    CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
    """,
    # A run's priority (per job, or per trigger): among startable runs the highest starts first.
    """
    ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    """,
)


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version now in force. Blocking."""
    row = db.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(f"the store has schema version {version}, newer than this jobd knows ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    return len(MIGRATIONS)
