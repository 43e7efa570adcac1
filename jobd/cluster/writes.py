"""The SQL transactions of cluster mode that write a run's change together with its event.

Each takes a connection inside a transaction; the event row is what the other nodes (and this
one) hear of the change, through the tailed feed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from jobd.cluster.chaining import Chainer
from jobd.models import Run, RunStatus
from jobd.store.base import NODE_COLUMN, row_to_run
from jobd.store.notifications import NewNotification
from jobd.store.postgres import notifications, runs
from jobd.store.postgres.runs import SELECT_RUN, Conn

# A job's failure streak after a batch of its runs ended: `reset` when a run of the batch ended
# neither FAILED nor CANCELLED, then `failures` failed after the last such run. Each returns the
# streak before. Only a batch with failures locks the job's row: one that ended well takes the
# lock only if there is a streak to reset, so the nodes' writers do not queue on a busy job's row.
_STATE_ROW = "INSERT INTO job_state (job) VALUES (%s) ON CONFLICT (job) DO NOTHING"
_STATE_FAILED = (
    "UPDATE job_state j SET consecutive_failures = CASE WHEN %(reset)s THEN %(failures)s "
    "ELSE o.old + %(failures)s END, "
    # pause_after_failures (jobd.config.runrules.pauses): the streak reached a multiple of it
    "paused = j.paused OR COALESCE((CASE WHEN %(reset)s THEN %(failures)s ELSE o.old + %(failures)s END) "
    "/ NULLIF(%(pause_after)s, 0) > (CASE WHEN %(reset)s THEN 0 ELSE o.old END) / NULLIF(%(pause_after)s, 0), false) "
    "FROM (SELECT consecutive_failures AS old FROM job_state WHERE job = %(job)s FOR UPDATE) o "
    "WHERE j.job = %(job)s RETURNING o.old"
)
_STATE_RESET = (
    "UPDATE job_state j SET consecutive_failures = 0 "
    "FROM (SELECT consecutive_failures AS old FROM job_state "
    "WHERE job = %(job)s AND consecutive_failures <> 0 FOR UPDATE) o "
    "WHERE j.job = %(job)s RETURNING o.old"
)
_STATE_READ = "SELECT consecutive_failures FROM job_state WHERE job = %(job)s"
_LAST_RUNS = (
    "INSERT INTO job_state (job, last_run_id) SELECT * FROM unnest(%s::text[], %s::int8[]) "
    "ON CONFLICT (job) DO UPDATE SET last_run_id = GREATEST(job_state.last_run_id, excluded.last_run_id)"
)
_ACTIVE_OF_JOB = f"SELECT {SELECT_RUN} FROM runs WHERE job = %s AND status IN ('PENDING', 'PROCESSING') ORDER BY id"


def _clean(text: str | None) -> str | None:
    """Lone surrogates (a handler's broken text) cannot be sent to PostgreSQL: replaced."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def cleaned(run: Run) -> Run:
    run.message = _clean(run.message)
    run.error = _clean(run.error)
    run.log_tail = _clean(run.log_tail) or ""
    return run


async def create(conn: Conn, new: Sequence[Run]) -> None:
    """Insert runs built with id 0, announced: their ids are taken from the cluster's sequence here."""
    ids = await runs.next_run_ids(conn, len(new))
    for run, run_id in zip(new, ids):
        run.id = run_id
    await runs.create_runs(conn, new)


async def active_of(conn: Conn, job: str) -> list[Run]:
    cur = await conn.execute(_ACTIVE_OF_JOB, (job,))
    return [row_to_run(row) for row in await cur.fetchall()]


async def lock_run(conn: Conn, run_id: int) -> tuple[Run, str | None] | None:
    cur = await conn.execute(f"SELECT {SELECT_RUN} FROM runs WHERE id = %s FOR UPDATE", (run_id,))
    row = await cur.fetchone()
    return None if row is None else (row_to_run(row), row[NODE_COLUMN])


class Ended:
    """What ended() leaves for after the commit: the failure streak each ended run's job had
    before it (the job_state statements go last, just before the COMMIT, so the row lock they
    may take is held as briefly as can be), and each job's newest ended run."""

    def __init__(self) -> None:
        self._jobs: list[tuple[AsyncCursor[TupleRow], list[Run]]] = []
        self.last_runs: dict[str, int] = {}
        self._streaks: dict[int, int] | None = None

    def add(self, cursor: AsyncCursor[TupleRow], ended_runs: list[Run]) -> None:
        self._jobs.append((cursor, ended_runs))

    async def streaks(self) -> dict[int, int]:
        if self._streaks is not None:  # read once: the cursors are used up
            return self._streaks
        streaks: dict[int, int] = {}
        self._streaks = streaks
        for cursor, ended_runs in self._jobs:
            row = await cursor.fetchone()
            streak = int(row[0]) if row else 0
            for final in ended_runs:
                streaks[final.id] = streak
                if final.status is RunStatus.FAILED:
                    streak += 1
                elif final.status is not RunStatus.CANCELLED:
                    streak = 0
        return streaks

    async def save_last_runs(self, conn: Conn) -> None:
        """Each job's newest ended run, after the commit of the ends (outside any transaction),
        in a statement of its own: every ending batch writes it, and alone it holds the job's
        row only while PostgreSQL applies it."""
        if self.last_runs:
            await conn.execute(_LAST_RUNS, (list(self.last_runs), list(self.last_runs.values())))


# What a run's end notifies (jobd.notify.plan.run_ended over the job's config): the ended run,
# its retry, the job's failure streak before it.
PlanEnd = Callable[[Run, Run | None, int], list[NewNotification]]


async def ended(
    conn: Conn,
    finals: Sequence[tuple[Run, uuid.UUID | None, Run | None]],
    *,
    last_runs_later: bool = False,
    plan: PlanEnd | None = None,
    chainer: Chainer | None = None,
    pause_after: Callable[[str], int | None] | None = None,
) -> Ended:
    """Write terminal states (each checked against its claim token; None: a run nobody owns,
    written if still PENDING), the retries they call for, the children of their chains (with a
    `chainer`), their events and the job states.
    With `last_runs_later` the caller saves the jobs' last runs after the commit. With `plan`,
    the notifications of the ends are inserted too (one statement, when there are any)."""
    written: set[int] = set()
    for final, _, _ in finals:
        cleaned(final)
    owned = [(final, token) for final, token, _ in finals if token is not None]
    written |= await runs.finish_many(conn, owned)
    for final, token, _ in finals:
        if token is None and await runs.update_run(conn, final, was=RunStatus.PENDING):
            written.add(final.id)
    done = [(final, again) for final, _, again in finals if final.id in written]
    retries = [again for _, again in done if again is not None]
    if retries:
        for new, run_id in zip(retries, await runs.next_run_ids(conn, len(retries))):
            new.id = run_id
        await runs.create_runs(conn, retries)
    if chainer is not None:
        await chainer.chain(conn, [final for final, again in done if again is None])
    by_job: dict[str, list[tuple[Run, Run | None]]] = {}
    for ended_run, its_retry in done:
        by_job.setdefault(ended_run.job, []).append((ended_run, its_retry))
    result = Ended()
    for job in sorted(by_job):  # one lock order for every node
        ended_runs = by_job[job]
        failures, reset = 0, False
        for final, _ in ended_runs:
            if final.status is RunStatus.FAILED:
                failures += 1
            elif final.status is not RunStatus.CANCELLED:
                failures, reset = 0, True
        result.last_runs[job] = max((again or final).id for final, again in ended_runs)
        limit = pause_after(job) if pause_after is not None else None
        values = {"reset": reset, "failures": failures, "job": job, "pause_after": limit or 0}
        if failures:
            await conn.execute(_STATE_ROW, (job,))
            cur = await conn.execute(_STATE_FAILED, values)
        else:
            cur = await conn.execute(_STATE_RESET if reset else _STATE_READ, values)
        result.add(cur, [final for final, _ in ended_runs])
    if not last_runs_later and result.last_runs:
        await conn.execute(_LAST_RUNS, (list(result.last_runs), list(result.last_runs.values())))
    if plan is not None and done:
        streaks = await result.streaks()
        made = [item for final, again in done for item in plan(final, again, streaks.get(final.id, 0))]
        await notifications.insert(conn, made)
    return result
