"""The SQL transactions of cluster mode that write a run's change together with its event.

Each takes a connection inside a transaction; the event row is what the other nodes (and this
one) hear of the change, through the tailed feed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from jobd.cluster.eventfeed import encode
from jobd.models import Run, RunStatus, status_update
from jobd.store.base import row_to_run
from jobd.store.postgres import events, runs
from jobd.store.postgres.runs import SELECT_RUN, Conn

_STATE_ROW = "INSERT INTO job_state (job) VALUES (%s) ON CONFLICT (job) DO NOTHING"
# One update per job and batch: `reset` when a run of the batch ended neither FAILED nor
# CANCELLED, then `failures` failed after the last such run. Returns the streak before.
_STATE_ENDED = (
    "UPDATE job_state j SET consecutive_failures = CASE WHEN %(reset)s THEN %(failures)s "
    "ELSE o.old + %(failures)s END, last_run_id = GREATEST(j.last_run_id, %(newest)s) "
    "FROM (SELECT consecutive_failures AS old FROM job_state WHERE job = %(job)s FOR UPDATE) o "
    "WHERE j.job = %(job)s RETURNING o.old"
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


def status_event(run: Run) -> events.NewEvent:
    return events.NewEvent(
        "status_update", encode(status_update(run)), run_id=run.id, job=run.job, status=run.status.value
    )


async def announce(conn: Conn, changed: Sequence[Run]) -> None:
    await events.append_events(conn, [status_event(run) for run in changed])
    await events.notify(conn, events.CHANNEL_EVENTS)


async def create(conn: Conn, new: Sequence[Run]) -> None:
    """Insert runs built with id 0: their ids are taken from the cluster's sequence here."""
    ids = await runs.next_run_ids(conn, len(new))
    for run, run_id in zip(new, ids):
        run.id = run_id
    await runs.insert_runs(conn, new)
    await announce(conn, new)


async def active_of(conn: Conn, job: str) -> list[Run]:
    cur = await conn.execute(_ACTIVE_OF_JOB, (job,))
    return [row_to_run(row) for row in await cur.fetchall()]


async def lock_run(conn: Conn, run_id: int) -> tuple[Run, str | None] | None:
    cur = await conn.execute(f"SELECT {SELECT_RUN} FROM runs WHERE id = %s FOR UPDATE", (run_id,))
    row = await cur.fetchone()
    return None if row is None else (row_to_run(row), row[25])


async def ended(conn: Conn, finals: Sequence[tuple[Run, uuid.UUID | None, Run | None]]) -> dict[int, int]:
    """Write terminal states (each checked against its claim token; None: a run nobody owns,
    written if still PENDING), the retries they call for, the job states and the events.
    Returns, for each run written, its job's failure streak before it."""
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
    streaks: dict[int, int] = {}
    by_job: dict[str, list[tuple[Run, Run | None]]] = {}
    for ended_run, its_retry in done:
        by_job.setdefault(ended_run.job, []).append((ended_run, its_retry))
    for job in sorted(by_job):  # one lock order for every node
        ended_runs = by_job[job]
        failures, reset = 0, False
        for final, _ in ended_runs:
            if final.status is RunStatus.FAILED:
                failures += 1
            elif final.status is not RunStatus.CANCELLED:
                failures, reset = 0, True
        newest = max((again or final).id for final, again in ended_runs)
        await conn.execute(_STATE_ROW, (job,))
        cur = await conn.execute(_STATE_ENDED, {"reset": reset, "failures": failures, "newest": newest, "job": job})
        row = await cur.fetchone()
        streak = int(row[0]) if row else 0
        for final, _ in ended_runs:
            streaks[final.id] = streak
            if final.status is RunStatus.FAILED:
                streak += 1
            elif final.status is not RunStatus.CANCELLED:
                streak = 0
    if done:
        await announce(conn, [final for final, _ in done])
    if retries:
        await runs.insert_runs(conn, retries)
        await announce(conn, retries)
    return streaks
