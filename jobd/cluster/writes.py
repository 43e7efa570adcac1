"""The SQL transactions of cluster mode that write a run's change together with its event.

Each takes a connection inside a transaction; the event row is what the other nodes (and this
one) hear of the change, through the tailed feed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from jobd.cluster.eventfeed import encode
from jobd.models import Run, RunStatus, status_update
from jobd.store.postgres import events, runs
from jobd.store.postgres.runs import SELECT_RUN, Conn, row_to_run

_STATE_ENDED = (
    "INSERT INTO job_state (job, consecutive_failures, last_run_id) VALUES (%s, %s, %s) "
    "ON CONFLICT (job) DO UPDATE SET consecutive_failures = CASE WHEN %s THEN job_state.consecutive_failures + 1 "
    "WHEN %s THEN job_state.consecutive_failures ELSE 0 END, "
    "last_run_id = GREATEST(job_state.last_run_id, excluded.last_run_id) RETURNING consecutive_failures"
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
        for again, run_id in zip(retries, await runs.next_run_ids(conn, len(retries))):
            again.id = run_id
    streaks: dict[int, int] = {}
    for final, again in done:
        failed = final.status is RunStatus.FAILED
        kept = final.status is RunStatus.CANCELLED
        cur = await conn.execute(_STATE_ENDED, (final.job, 1 if failed else 0, (again or final).id, failed, kept))
        row = await cur.fetchone()
        streak = int(row[0]) if row else 0
        streaks[final.id] = streak - 1 if failed else streak
    if done:
        await announce(conn, [final for final, _ in done])
    if retries:
        await runs.insert_runs(conn, retries)
        await announce(conn, retries)
    return streaks
