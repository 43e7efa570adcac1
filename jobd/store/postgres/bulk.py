"""Blocking bulk writes for the command line: moving a single node's history into a cluster
(`jobd copy-store`) with COPY, which takes rows at the speed of the disk instead of one
statement per row."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import Connection
from psycopg.rows import TupleRow

from jobd.models import Run
from jobd.store.base import IdempotencyKey, JobState
from jobd.store.postgres.cluster import JOB_STATE_COLUMNS
from jobd.store.postgres.runs import RUN_COLUMNS, run_to_row

SyncConn = Connection[TupleRow]


def copy_runs(conn: SyncConn, runs: Iterable[Run]) -> int:
    """Write runs with their ids as they are; returns how many. Call advance_run_ids() after."""
    count = 0
    with conn.cursor() as cur, cur.copy(f"COPY runs ({', '.join(RUN_COLUMNS)}) FROM STDIN") as copy:
        for run in runs:
            copy.write_row(run_to_row(run))
            count += 1
    return count


def advance_run_ids(conn: SyncConn) -> None:
    """Make the next run id follow the largest one copied in."""
    conn.execute("SELECT setval('runs_id_seq', GREATEST((SELECT max(id) FROM runs), 1))")


def copy_job_states(conn: SyncConn, states: Iterable[JobState]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY job_state ({', '.join(JOB_STATE_COLUMNS)}) FROM STDIN") as copy:
        for s in states:
            copy.write_row(
                (
                    s.job,
                    s.paused,
                    s.last_fire_at,
                    s.skipped_fires,
                    s.last_skipped_at,
                    s.consecutive_failures,
                    s.last_run_id,
                )
            )


def copy_idempotency_keys(conn: SyncConn, keys: Iterable[IdempotencyKey]) -> None:
    with conn.cursor() as cur, cur.copy("COPY idempotency (job, key, run_id, created_at) FROM STDIN") as copy:
        for k in keys:
            copy.write_row((k.job, k.key, k.run_id, k.created_at))
