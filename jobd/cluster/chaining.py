"""Chains in a cluster: the children of runs' ends, created in the transaction that writes the
ends (writes.ended), each admitted under its job's lock like any created run, and announced by
their events in that transaction. See jobd/lifecycle/chains.py for what a chain makes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from jobd.config import JobConfig
from jobd.config.chains import NO_CHAIN
from jobd.lifecycle import admission, chains
from jobd.models import Run, compact_json
from jobd.store.base import row_to_run
from jobd.store.postgres import events, runs
from jobd.store.postgres.runs import Admission, Conn

Replace = Callable[[Conn, Run, str], Awaitable[None]]
_ACTIVE_OF_JOB = (
    f"SELECT {runs.SELECT_RUN} FROM runs WHERE job = %s AND status IN ('PENDING', 'PROCESSING') ORDER BY id"
)
_SAVE_CHILDREN = "UPDATE runs SET children = %s WHERE id = %s"


class Chainer:
    """What the ends need to make their children: the jobs as configured now, and how the
    backend cancels the runs a child with overlap = "replace" replaces."""

    def __init__(self, jobs: Callable[[], Mapping[str, JobConfig]], replace: Replace) -> None:
        self.jobs = jobs
        self.replace = replace

    async def chain(self, conn: Conn, finals: Sequence[Run]) -> list[Run]:
        """Create the children of `finals` (runs whose end this transaction writes, with no
        retry after them), record them on their parents, and return them."""
        jobs = self.jobs()
        plans = []
        for final in finals:
            job = jobs.get(final.job)
            if job is not None and job.chain is not NO_CHAIN and job.chain.targets():
                plans.append((final, chains.links(job, final, jobs)))
        if not plans:
            return []
        counted = sorted(
            {
                link.job
                for _, links in plans
                for link in links
                if link.refused is None and admission.counts_matter(jobs[link.job].overlap)
            }
        )
        counts = {name: await runs.admit(conn, name) for name in counted}  # in one order on every node
        made: list[Run] = []
        records: list[tuple[Run, list[Run | dict[str, Any]]]] = []
        for final, links in plans:
            record: list[Run | dict[str, Any]] = []
            for link in links:
                reason = link.refused
                child_job = jobs.get(link.job)
                if reason is None and child_job is not None:
                    reason = await self._admit(conn, child_job, counts, made)
                if reason is not None or child_job is None:
                    record.append(chains.skipped(link.job, reason or ""))
                    continue
                child = chains.child_run(final, child_job, run_id=0, now=final.updated_at)
                made.append(child)
                record.append(child)
            records.append((final, record))
        if made:
            for child, run_id in zip(made, await runs.next_run_ids(conn, len(made))):
                child.id = run_id
            await runs.create_runs(conn, made)
            await events.notify_wakeup(conn)
        for final, record in records:
            final.children = [chains.made(item) if isinstance(item, Run) else item for item in record]
            await conn.execute(_SAVE_CHILDREN, (compact_json(final.children), final.id))
        return made

    async def _admit(self, conn: Conn, job: JobConfig, counts: dict[str, Admission], made: list[Run]) -> str | None:
        """The child job's overlap policy on its active runs, those made in this transaction
        included: why it refuses, or None (and the count now holds the child)."""
        count = counts.get(job.name, Admission(pending=0, processing=0))
        decision = admission.decide(job.overlap, pending=count.pending, processing=count.processing, count=1)
        if decision is admission.Decision.REFUSE:
            active = await self._active_of(conn, job.name) + [run for run in made if run.job == job.name]
            return admission.refusal(job.name, job.overlap, active).detail
        if decision is admission.Decision.REPLACE:
            for run in await self._active_of(conn, job.name):
                await self.replace(conn, run, f"replaced by a newer run of {job.name!r}")
            count = await runs.admit(conn, job.name)
        counts[job.name] = Admission(pending=count.pending + 1, processing=count.processing)
        return None

    @staticmethod
    async def _active_of(conn: Conn, job: str) -> list[Run]:
        cur = await conn.execute(_ACTIVE_OF_JOB, (job,))
        return [row_to_run(row) for row in await cur.fetchall()]
