"""What the nodes share besides runs: cron fire records, job state (pause included), the nodes
themselves with their heartbeats, and declaring dead the nodes that stopped beating."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import psycopg

from jobd.store.base import JobState
from jobd.store.postgres.runs import SELECT_RUN, Claimed, Conn, row_to_claimed
from jobd.store.postgres.schema import LOCK_REAPER, LOCK_RETENTION

JOB_STATE_COLUMNS = (
    "job",
    "paused",
    "last_fire_at",
    "skipped_fires",
    "last_skipped_at",
    "consecutive_failures",
    "last_run_id",
    "last_skip_reason",
)
_UPSERT_JOB_STATE = (
    f"INSERT INTO job_state ({', '.join(JOB_STATE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(JOB_STATE_COLUMNS))}) "
    "ON CONFLICT (job) DO UPDATE SET "
    + ", ".join(f"{col} = excluded.{col}" for col in JOB_STATE_COLUMNS if col != "job")
)


# -- cron fires ---------------------------------------------------------------------------------


async def record_fire(conn: Conn, job: str, scheduled_for: int, node: str) -> bool:
    """Claim the fire of `job` at `scheduled_for` for this node: True if this call created its
    record, False if another node (or an earlier life of this one) already did. Create the run
    or the skip in the same transaction, then settle_fire()."""
    cur = await conn.execute(
        "INSERT INTO fires (job, scheduled_for, node) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING true",
        (job, scheduled_for, node),
    )
    return await cur.fetchone() is not None


async def settle_fire(conn: Conn, job: str, scheduled_for: int, run_id: int | None) -> None:
    """What the fire became: a run, or (None) a skip under the overlap policy."""
    await conn.execute(
        "UPDATE fires SET run_id = %s, skipped = %s WHERE job = %s AND scheduled_for = %s",
        (run_id, run_id is None, job, scheduled_for),
    )


async def record_excluded(conn: Conn, state: JobState, scheduled_for: int, node: str, now: int) -> bool:
    """A fire the job's calendars leave out, recorded once for the cluster as a skip with its
    job state (`state` is updated): False if another node already recorded it."""
    if not await record_fire(conn, state.job, scheduled_for, node):
        return False
    state.last_fire_at = max(state.last_fire_at or 0, scheduled_for)
    state.skipped_fires += 1
    state.last_skipped_at = now
    state.last_skip_reason = "excluded"
    await save_job_state(conn, state)
    await settle_fire(conn, state.job, scheduled_for, None)
    return True


async def last_fires(conn: Conn) -> dict[str, int]:
    """The last recorded fire of each job: where catch-up starts after the cluster was down."""
    cur = await conn.execute("SELECT job, max(scheduled_for) FROM fires GROUP BY job")
    return {str(job): int(at) for job, at in await cur.fetchall()}


async def trim_fires(conn: Conn, before_ms: int, limit: int = 10_000) -> int:
    """Forget up to `limit` fires older than `before_ms`, keeping each job's last one (catch-up
    reads it); returns how many went."""
    cur = await conn.execute(
        "DELETE FROM fires WHERE (job, scheduled_for) IN ("
        "SELECT f.job, f.scheduled_for FROM fires f WHERE f.scheduled_for < %s "
        "AND EXISTS (SELECT 1 FROM fires l WHERE l.job = f.job AND l.scheduled_for > f.scheduled_for) "
        "ORDER BY f.job, f.scheduled_for LIMIT %s)",
        (before_ms, limit),
    )
    return cur.rowcount


# -- job state ----------------------------------------------------------------------------------


async def load_job_states(conn: Conn) -> list[JobState]:
    cur = await conn.execute(f"SELECT {', '.join(JOB_STATE_COLUMNS)} FROM job_state ORDER BY job")
    return [JobState(*row) for row in await cur.fetchall()]


async def save_job_state(conn: Conn, state: JobState) -> None:
    await conn.execute(
        _UPSERT_JOB_STATE,
        (
            state.job,
            state.paused,
            state.last_fire_at,
            state.skipped_fires,
            state.last_skipped_at,
            state.consecutive_failures,
            state.last_run_id,
            state.last_skip_reason,
        ),
    )


async def set_paused(conn: Conn, job: str, paused: bool) -> None:
    """Pause or resume a job for the whole cluster, leaving the rest of its state alone."""
    await conn.execute(
        "INSERT INTO job_state (job, paused) VALUES (%s, %s) ON CONFLICT (job) DO UPDATE SET paused = excluded.paused",
        (job, paused),
    )


# -- nodes --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    name: str
    host: str
    pid: int
    started_at: int
    heartbeat_at: int
    running: int  # runs PROCESSING on it
    alive: bool
    url: str | None = None  # where the other nodes reach it; None until it listens
    heartbeat_age_ms: int = 0  # in database time


async def register_node(conn: Conn, name: str, host: str, pid: int, url: str | None = None) -> None:
    """A node joins (or rejoins under its name): alive, with a fresh heartbeat in database time."""
    await conn.execute(
        "INSERT INTO nodes (name, host, pid, url, started_at, heartbeat_at) "
        "VALUES (%s, %s, %s, %s, jobd_now_ms(), jobd_now_ms()) "
        "ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, url = excluded.url, "
        "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, dead_at = NULL",
        (name, host, pid, url),
    )


async def set_node_url(conn: Conn, name: str, url: str | None) -> None:
    """Where the node answers, once it listens (its port may be the one the system picked)."""
    await conn.execute("UPDATE nodes SET url = %s WHERE name = %s", (url, name))


async def get_node(conn: Conn, name: str, dead_after_s: float) -> Node | None:
    nodes = await list_nodes(conn, dead_after_s, name=name)
    return nodes[0] if nodes else None


async def cluster_key(conn: Conn) -> bytes:
    """The key every node signs stream tickets with (made by the schema's migration)."""
    cur = await conn.execute("SELECT key FROM cluster_key LIMIT 1")
    row = await cur.fetchone()
    if row is None:
        raise psycopg.DataError("the cluster_key table is empty: run jobd migrate")
    return bytes(row[0])


async def heartbeat(conn: Conn, name: str, url: str | None = None) -> bool:
    """Beat (and say where the node answers, when it knows); False once the node has been
    declared dead: it must stop claiming and stop its runs, which other nodes have taken over."""
    cur = await conn.execute(
        "UPDATE nodes SET heartbeat_at = jobd_now_ms(), url = COALESCE(%s, url) "
        "WHERE name = %s AND dead_at IS NULL RETURNING true",
        (url, name),
    )
    return await cur.fetchone() is not None


async def leave(conn: Conn, name: str) -> None:
    """A node that stops cleanly leaves the list (its runs were finished or handed back)."""
    await conn.execute("DELETE FROM nodes WHERE name = %s", (name,))


async def list_nodes(conn: Conn, dead_after_s: float, *, name: str | None = None) -> list[Node]:
    """Every node (or the one named), alive or not, with its heartbeat's age in database time."""
    cur = await conn.execute(
        "SELECT n.name, n.host, n.pid, n.started_at, n.heartbeat_at, "
        "(SELECT count(*) FROM runs r WHERE r.node = n.name AND r.status = 'PROCESSING'), "
        "n.dead_at IS NULL AND n.heartbeat_at >= now.ms - %s * 1000, n.url, now.ms - n.heartbeat_at "
        "FROM nodes n, (SELECT jobd_now_ms() AS ms) now WHERE %s::text IS NULL OR n.name = %s ORDER BY n.name",
        (dead_after_s, name, name),
    )
    return [Node(*row) for row in await cur.fetchall()]


@contextlib.asynccontextmanager
async def reaper_lock(conn: Conn, hold_s: float = 30.0) -> AsyncIterator[bool]:
    """A transaction for the block, and whether it is the one reaper of the cluster (an advisory
    lock, tried, not waited for: another node reaping now is as good). The lock ends with the
    transaction, and PostgreSQL ends a transaction left idle for `hold_s`: a node paused while
    it holds the lock (SIGSTOP, a frozen VM) keeps no other node from reaping, itself included,
    for longer than that. A session-level lock would be held for as long as the node is paused."""
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, true)", (str(round(hold_s * 1000)),)
        )
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", LOCK_REAPER)
        row = await cur.fetchone()
        yield bool(row and row[0])


@contextlib.asynccontextmanager
async def retention_lock(conn: Conn) -> AsyncIterator[bool]:
    """Whether this connection's node is the one running retention for the block (tried, as
    reaper_lock(): another node's clean-up now is as good as this one's)."""
    async with _tried_lock(conn, LOCK_RETENTION) as held:
        yield held


@contextlib.asynccontextmanager
async def _tried_lock(conn: Conn, key: tuple[int, int]) -> AsyncIterator[bool]:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
    row = await cur.fetchone()
    held = bool(row and row[0])
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(psycopg.Error):  # a broken connection took the lock with it
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)


@dataclasses.dataclass(frozen=True, slots=True)
class DeadNodes:
    names: list[str]  # declared dead by this call
    runs: list[Claimed]  # PROCESSING runs of nodes not alive, locked until the transaction ends


async def declare_dead(conn: Conn, dead_after_s: float) -> DeadNodes:
    """Declare dead the nodes whose last heartbeat is older than `dead_after_s`, and return the
    PROCESSING runs of every node not alive. Call it under reaper_lock(), and in its transaction
    end or re-queue the runs with finish() and their tokens (the crash-recovery rules): a dead
    node that wakes up then finds its tokens spent."""
    cur = await conn.execute(
        "UPDATE nodes SET dead_at = jobd_now_ms() "
        "WHERE dead_at IS NULL AND heartbeat_at < jobd_now_ms() - %s * 1000 RETURNING name",
        (dead_after_s,),
    )
    names = sorted(str(row[0]) for row in await cur.fetchall())
    cur = await conn.execute(
        f"SELECT {SELECT_RUN} FROM runs WHERE status = 'PROCESSING' AND NOT EXISTS "
        "(SELECT 1 FROM nodes n WHERE n.name = runs.node AND n.dead_at IS NULL) ORDER BY id FOR UPDATE"
    )
    return DeadNodes(names, [row_to_claimed(row) for row in await cur.fetchall()])
