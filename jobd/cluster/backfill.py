"""A backfill in a cluster: one run per past fire time that no node has made yet.

The fires table is what makes a fire happen once, for the cron loop of every node and for
backfills alike: a time is claimed by inserting its row (or, for a fire the overlap policy
skipped, by taking that row over), in one statement, so two backfills of the same range at once
on two nodes make each run once. The rows are claimed before anything else is locked, in the
order a cron fire takes its own, so a backfill and a fire never wait for each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jobd.cluster import writes
from jobd.models import Run
from jobd.store.postgres.runs import Conn

_CLAIM_NEW = (
    "INSERT INTO fires (job, scheduled_for, node) SELECT %s, at, %s FROM unnest(%s::bigint[]) AS at ORDER BY at "
    "ON CONFLICT DO NOTHING RETURNING scheduled_for"
)
# A skipped fire made no run: a backfill makes it.
_CLAIM_SKIPPED = (
    "UPDATE fires SET skipped = false, node = %s WHERE job = %s AND scheduled_for = ANY(%s::bigint[]) "
    "AND skipped AND run_id IS NULL RETURNING scheduled_for"
)
# A run whose fire row retention trimmed still counts.
_HAVE_RUNS = "SELECT scheduled_for FROM runs WHERE job = %s AND scheduled_for = ANY(%s::bigint[])"
_SETTLE = (
    "UPDATE fires SET run_id = made.run_id FROM unnest(%s::bigint[], %s::bigint[]) AS made(at, run_id) "
    "WHERE fires.job = %s AND fires.scheduled_for = made.at"
)


async def backfill(
    conn: Conn, job: str, times: Sequence[int], node: str, new_run: Callable[[int], Run]
) -> tuple[list[Run], list[int]]:
    """In the caller's transaction: the runs made (`new_run(at)` builds one, written here) and
    the times that already had a fire or a run."""
    cur = await conn.execute(_CLAIM_NEW, (job, node, list(times)))
    claimed = {int(row[0]) for row in await cur.fetchall()}
    rest = [at for at in times if at not in claimed]
    if rest:
        cur = await conn.execute(_CLAIM_SKIPPED, (node, job, rest))
        claimed |= {int(row[0]) for row in await cur.fetchall()}
    if claimed:
        cur = await conn.execute(_HAVE_RUNS, (job, sorted(claimed)))
        claimed -= {int(row[0]) for row in await cur.fetchall()}
    made = [new_run(at) for at in sorted(claimed)]
    if made:
        await writes.create(conn, made)
        await conn.execute(_SETTLE, ([run.scheduled_for for run in made], [run.id for run in made], job))
    return made, [at for at in times if at not in claimed]
