"""The table of active runs: counts per job and status, terminal commits in flight, waiters."""

from __future__ import annotations

import asyncio

import pytest

from jobd.lifecycle.active import ActiveRuns
from jobd.models import Run, RunStatus, TriggerSource


def run(run_id: int, job: str = "j") -> Run:
    return Run(id=run_id, job=job, status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=run_id)


async def test_counts_follow_every_move() -> None:
    table = ActiveRuns()
    runs = [run(1), run(2), run(3, "k")]
    for r in runs:
        table.add(r)
    assert (table.pending_of("j"), table.pending_of("k"), len(table.pending)) == (2, 1, 3)
    table.moving(runs[0])
    runs[0].status = RunStatus.PROCESSING
    table.moved(runs[0])
    assert (table.pending_of("j"), table.processing_of("j"), table.processing_count) == (1, 1, 1)
    assert list(table.pending) == [2, 3] and [r.id for r in table.of_job("j")] == [1, 2]
    table.withdraw(runs[1])  # its creation was not committed
    assert table.pending_of("j") == 0 and 2 not in table and len(table) == 2
    table.moving(runs[0])
    runs[0].status = RunStatus.COMPLETED
    table.moved(runs[0])
    table.remove(runs[0])
    assert table.processing_count == 0 and table.of_job("j") == [] and list(table) == [3]


async def test_a_run_whose_end_is_being_committed_is_not_startable() -> None:
    table = ActiveRuns()
    r = run(1)
    table.add(r)
    assert table.startable(r)
    table.begin_finish(r.id)
    assert not table.startable(r) and table.finishing(r.id)
    settled = asyncio.ensure_future(table.wait_settled())
    await asyncio.sleep(0)
    assert not settled.done()
    table.end_finish(r.id)
    await asyncio.wait_for(settled, 1)


async def test_waiters_are_woken_at_the_end_and_leave_nothing_when_they_give_up() -> None:
    table = ActiveRuns()
    r = run(1)
    table.add(r)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await table.wait_finished(r)
    assert table.waiters_of(r.id) == 0
    waiting = asyncio.ensure_future(table.wait_finished(r))
    await asyncio.sleep(0)
    assert table.waiters_of(r.id) == 1
    table.remove(r)
    await asyncio.wait_for(waiting, 1)
    await table.wait_finished(r)  # over already: returns at once
