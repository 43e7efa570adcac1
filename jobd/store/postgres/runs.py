"""The runs of the cluster: creating them, admission under a job's lock, claiming, the owner's
writes checked against its claim token, cancel requests.

Each function takes a connection and leaves the transaction to the caller, so a change and the
event that announces it (events.append_event) commit together.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from jobd.models import Run, RunStatus, compact_json
from jobd.store.base import IMMUTABLE_RUN_COLUMNS, NODE_COLUMN, RUN_COLUMNS, IdempotencyKey, row_to_run
from jobd.store.postgres.schema import LOCK_JOB

Conn = AsyncConnection[TupleRow]

_MUTABLE = tuple(col for col in RUN_COLUMNS if col not in IMMUTABLE_RUN_COLUMNS)
SELECT_RUN = ", ".join(RUN_COLUMNS) + ", node, claim_token"
_INSERT = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})"
_SET_MUTABLE = ", ".join(f"{col} = %s" for col in _MUTABLE)
_WRITE_CLAIMED = (
    f"UPDATE runs SET {_SET_MUTABLE} WHERE id = %s AND claim_token = %s AND status = 'PROCESSING' RETURNING id"
)
# Batches go to PostgreSQL as one array per column (unnest), so a batch is one statement.
_TYPES = {"progress": "float8", "attempt": "int4", "max_attempts": "int4", "exit_code": "int4", "priority": "int4"}
_TEXT = {"job", "status", "message", "triggered_by", "params", "result", "error", "log_tail", "children"}


def _arrays(columns: Sequence[str]) -> str:
    return ", ".join(f"%s::{'text' if c in _TEXT else _TYPES.get(c, 'int8')}[]" for c in columns)


# The status_update event of each written run, built by jobd_status_update() (migrations.py) from
# the row as written, and the wake-up of the nodes that tail the events.
_ANNOUNCE = (
    "announced AS (INSERT INTO events (type, run_id, job, status, data) "
    "SELECT 'status_update', (w.run).id, (w.run).job, (w.run).status, jobd_status_update(w.run) "
    "FROM written w ORDER BY (w.run).id)"
)
_CREATE = (
    f"WITH written AS (INSERT INTO runs ({', '.join(RUN_COLUMNS)}) SELECT * FROM unnest({_arrays(RUN_COLUMNS)}) "
    f"RETURNING runs AS run), {_ANNOUNCE} SELECT pg_notify('jobd_events', '')"
)
_FINISH = (
    f"WITH v AS (SELECT * FROM unnest(%s::int8[], %s::uuid[], {_arrays(_MUTABLE)}) "
    f"AS v (id, token, {', '.join(_MUTABLE)})), "
    f"written AS (UPDATE runs SET {', '.join(f'{col} = v.{col}' for col in _MUTABLE)} FROM v "
    "WHERE runs.id = v.id AND runs.claim_token = v.token AND runs.status = 'PROCESSING' RETURNING runs AS run), "
    f"{_ANNOUNCE} SELECT (w.run).id, pg_notify('jobd_events', '') FROM written w"
)
_WRITE_FROM = (
    f"WITH written AS (UPDATE runs SET {_SET_MUTABLE} WHERE id = %s AND status = %s RETURNING runs AS run), "
    f"{_ANNOUNCE} SELECT (w.run).id, pg_notify('jobd_events', '') FROM written w"
)
_CLAIM = (
    f"SELECT {SELECT_RUN} FROM jobd_claim_announced(%s, %s, COALESCE(%s::bigint, jobd_now_ms()), %s::text[], "
    "%s::integer[], %s::bigint, %s::text[], %s::text[], %s::text[], %s::integer[])"
)
_LOCK_JOB = f"SELECT pg_advisory_xact_lock({LOCK_JOB}, hashtext(%s))"
_COUNT_ACTIVE = (
    "SELECT count(*) FILTER (WHERE status = 'PENDING'), count(*) FILTER (WHERE status = 'PROCESSING') "
    "FROM runs WHERE job = %s AND status IN ('PENDING', 'PROCESSING')"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    """A run this node owns: its final write must carry `token`."""

    run: Run
    node: str
    token: uuid.UUID


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """A job's active runs, counted under its lock: what the overlap policy decides on."""

    pending: int
    processing: int


def _text(value: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL, which a process's output may contain."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def run_to_row(run: Run) -> tuple[Any, ...]:
    c = run.counts
    return (
        run.id,
        run.job,
        run.status.value,
        run.progress,
        _text(run.message),
        run.triggered_by.value,
        compact_json(run.params) if run.params else "{}",
        run.attempt,
        run.max_attempts,
        run.scheduled_for,
        run.run_after,
        run.created_at,
        run.started_at,
        run.finished_at,
        run.duration_ms,
        c.total,
        c.success,
        c.failed,
        c.skipped,
        None if run.result is None else compact_json(run.result),
        _text(run.error),
        run.exit_code,
        run.retry_of,
        _text(run.log_tail),
        run.updated_at,
        run.parent_run_id,
        run.chain_depth,
        compact_json(run.children) if run.children else None,
        run.priority,
    )


def _mutable_values(run: Run) -> list[Any]:
    row = run_to_row(run)
    return [value for col, value in zip(RUN_COLUMNS, row) if col not in IMMUTABLE_RUN_COLUMNS]


def row_to_claimed(row: Sequence[Any]) -> Claimed:
    return Claimed(row_to_run(row), row[NODE_COLUMN], row[NODE_COLUMN + 1])


async def next_run_ids(conn: Conn, count: int = 1) -> list[int]:
    """Ids for runs about to be created, from the cluster's one sequence."""
    cur = await conn.execute("SELECT nextval('runs_id_seq') FROM generate_series(1, %s)", (count,))
    return [int(row[0]) for row in await cur.fetchall()]


async def insert_runs(conn: Conn, runs: Iterable[Run]) -> None:
    """Create runs (their ids from next_run_ids())."""
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT, [run_to_row(run) for run in runs])


async def create_runs(conn: Conn, runs: Sequence[Run]) -> None:
    """insert_runs() in one statement that also writes each run's status_update event."""
    if runs:
        await conn.execute(_CREATE, [list(column) for column in zip(*map(run_to_row, runs))])


async def get_run(conn: Conn, run_id: int) -> Run | None:
    cur = await conn.execute(f"SELECT {SELECT_RUN} FROM runs WHERE id = %s", (run_id,))
    row = await cur.fetchone()
    return None if row is None else row_to_run(row)


async def admit(conn: Conn, job: str) -> Admission:
    """Take `job`'s lock for the rest of the transaction and count its active runs.

    Creating a run under this lock makes the overlap decision hold across nodes: the claim takes
    the same lock, and a second admission of the job waits for the first to commit. A transaction
    admitting several jobs takes them in sorted order, as claim() does."""
    if conn.info.transaction_status is TransactionStatus.IDLE:
        raise RuntimeError("admit() holds its lock until the transaction ends: call it inside one")
    # Two statements: the count's snapshot is taken once the lock is held, so it sees every run
    # committed by the admission or claim that held it before (READ COMMITTED, the default).
    async with conn.pipeline():
        await conn.execute(_LOCK_JOB, (job,))
        cur = await conn.execute(_COUNT_ACTIVE, (job,))
    row = await cur.fetchone()
    assert row is not None
    return Admission(pending=int(row[0]), processing=int(row[1]))


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimGroups:
    """The shared concurrency groups as the claim takes them (see groups.claim_arguments()):
    (member job, group) pairs, each group's limit, and the aging of priorities in ms (0: none)."""

    member_jobs: Sequence[str] = ()
    member_groups: Sequence[str] = ()
    names: Sequence[str] = ()
    caps: Sequence[int] = ()
    aging_ms: int = 0


async def claim(
    conn: Conn,
    node: str,
    limit: int,
    caps: Mapping[str, int],
    *,
    now_ms: int | None = None,
    groups: ClaimGroups = ClaimGroups(),
) -> list[Claimed]:
    """Make up to `limit` startable runs PROCESSING on `node`, best effective priority first (then
    oldest); each gets a fresh claim token. `caps` are the jobs this node can run and how many runs
    of each may be PROCESSING in the whole cluster; runs of other jobs are left for nodes that know
    them. A run of a job in shared `groups` is taken only while each of them has a free slot.
    `now_ms` (default: the database's clock) is the time run_after is compared with.

    One call of jobd_claim(): under the locks of the jobs that have a startable run (taken in one
    order by every node), then those of their groups, the free slots per job and group are counted
    on a snapshot that sees every claim committed before, and the candidates are locked one by one
    with FOR UPDATE SKIP LOCKED before the UPDATE, so concurrent claimers never wait on, nor take,
    the same row. The locks are held until the transaction ends: run it in autocommit mode, or
    commit at once.
    The claim writes its runs' status_update events and the NOTIFY that announces them itself.
    """
    g = groups
    cur = await conn.execute(
        _CLAIM,
        (
            node,
            limit,
            now_ms,
            list(caps),
            list(caps.values()),
            g.aging_ms,
            list(g.member_jobs),
            list(g.member_groups),
            list(g.names),
            list(g.caps),
        ),
    )
    return [row_to_claimed(row) for row in await cur.fetchall()]


async def finish(conn: Conn, run: Run, token: uuid.UUID) -> bool:
    """The owner's write of its run (a progress report, or its end): applied only while the run
    is PROCESSING under this claim token. False when it changed nothing: the node was declared
    dead and the run was taken over, or it was already written as ended."""
    cur = await conn.execute(_WRITE_CLAIMED, (*_mutable_values(run), run.id, token))
    return await cur.fetchone() is not None


async def finish_many(conn: Conn, claims: Sequence[tuple[Run, uuid.UUID]]) -> set[int]:
    """finish() for a batch, in one statement that also writes each written run's
    status_update event; returns the ids that were written."""
    if not claims:
        return set()
    rows = [(run.id, token, *_mutable_values(run)) for run, token in claims]
    cur = await conn.execute(_FINISH, [list(column) for column in zip(*rows)])
    return {int(row[0]) for row in await cur.fetchall()}


async def update_run(conn: Conn, run: Run, *, was: RunStatus) -> bool:
    """A write by any node to a run nobody owns (cancelling a PENDING run, for one), announced:
    applied only if the run is still `was`."""
    cur = await conn.execute(_WRITE_FROM, (*_mutable_values(run), run.id, was.value))
    return await cur.fetchone() is not None


async def find_idempotent(conn: Conn, job: str, key: str, since: int = 0) -> int | None:
    """The run an idempotency key created at `since` or later (ask under the job's admission lock)."""
    cur = await conn.execute(
        "SELECT run_id FROM idempotency WHERE job = %s AND key = %s AND created_at >= %s", (job, key, since)
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def save_idempotent(conn: Conn, key: IdempotencyKey) -> None:
    await conn.execute(
        "INSERT INTO idempotency (job, key, run_id, created_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (job, key) DO UPDATE SET run_id = excluded.run_id, created_at = excluded.created_at",
        (key.job, key.key, key.run_id, key.created_at),
    )


async def request_cancel(conn: Conn, run_id: int) -> str | None:
    """Mark a PROCESSING run to be stopped by its owner; returns the owning node, None if the
    run is not PROCESSING. Send a NOTIFY on the control channel in the same transaction."""
    cur = await conn.execute(
        "UPDATE runs SET cancel_requested = true WHERE id = %s AND status = 'PROCESSING' RETURNING node", (run_id,)
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def cancel_requests(conn: Conn, node: str) -> list[int]:
    """The runs `node` owns that it was asked to stop (what a node polls for)."""
    cur = await conn.execute(
        "SELECT id FROM runs WHERE node = %s AND status = 'PROCESSING' AND cancel_requested ORDER BY id", (node,)
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def owned_runs(conn: Conn, node: str) -> list[Claimed]:
    """The runs PROCESSING on `node` (a node restarting under the same name recovers them)."""
    cur = await conn.execute(f"SELECT {SELECT_RUN} FROM runs WHERE node = %s AND status = 'PROCESSING'", (node,))
    return [row_to_claimed(row) for row in await cur.fetchall()]
