"""The ready queue: FIFO, each job held to its slots, waiting lines, run_after timers."""

from __future__ import annotations

import asyncio

from jobd.lifecycle.readyqueue import ReadyQueue
from jobd.models import Run, RunStatus, TriggerSource, now_ms


class Lines:
    """A ready queue over these limits (None: the job is gone), recording the orphans."""

    def __init__(self, **limits: int | None) -> None:
        self.limits = limits
        self.orphans: list[int] = []
        self.queue = ReadyQueue(
            limit_of=self.limits.get, clock=now_ms, orphaned=lambda run: self.orphans.append(run.id)
        )
        self.next_id = 0

    def add(self, job: str, *, run_after: int | None = None) -> Run:
        self.next_id += 1
        run = Run(
            id=self.next_id,
            job=job,
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.API,
            created_at=now_ms(),
            run_after=run_after,
        )
        self.queue.put(run)
        return run

    async def ready(self) -> list[int]:
        """The runs that can be taken now, in order (each keeps its slot)."""
        taken = []
        while True:
            try:
                async with asyncio.timeout(0.05):
                    taken.append((await self.queue.get()).id)
            except TimeoutError:
                return taken


async def test_runs_come_out_in_the_order_they_went_in() -> None:
    lines = Lines(a=10, b=10)
    for job in "abab":
        lines.add(job)
    assert await lines.ready() == [1, 2, 3, 4]


async def test_a_job_over_its_slots_waits_in_line_and_moves_up_as_slots_free() -> None:
    lines = Lines(a=2, b=1)
    for job in "aaabab":
        lines.add(job)
    assert await lines.ready() == [1, 2, 4]  # a's third and b's second wait
    lines.queue.release("a")
    assert await lines.ready() == [3]
    lines.queue.release("b")
    assert await lines.ready() == [6]
    lines.queue.release("a")
    lines.queue.release("a")
    assert await lines.ready() == [5]


async def test_a_run_withdrawn_from_its_line_never_comes_out() -> None:
    lines = Lines(a=1)
    first, second, third = lines.add("a"), lines.add("a"), lines.add("a")
    assert await lines.ready() == [first.id]
    lines.queue.withdraw(second)
    third.status = RunStatus.CANCELLED  # ended while it waited: skipped when its turn comes
    lines.queue.release("a")
    assert await lines.ready() == []  # the freed slot went to no one ...
    assert lines.add("a").id == 4 and await lines.ready() == [4]  # ... so the next run takes it at once


async def test_a_run_after_waits_out_its_timer_first() -> None:
    lines = Lines(a=5)
    later = lines.add("a", run_after=now_ms() + 150)
    now = lines.add("a")
    assert await lines.ready() == [now.id]
    taken = await asyncio.wait_for(lines.queue.get(), 2)
    assert taken is later and later.run_after is None and now_ms() >= later.created_at + 150


async def test_a_withdrawn_timer_does_not_fire() -> None:
    lines = Lines(a=5)
    run = lines.add("a", run_after=now_ms() + 50)
    lines.queue.withdraw(run)
    await asyncio.sleep(0.1)
    assert await lines.ready() == []


async def test_runs_of_a_job_that_went_away_are_handed_back() -> None:
    lines = Lines(a=1, gone=None)
    lines.add("gone")
    assert lines.orphans == [1]
    held = lines.add("a")
    waiting = lines.add("a")
    timed = lines.add("a", run_after=now_ms() + 60_000)
    assert await lines.ready() == [held.id]
    lines.limits["a"] = None  # a reload removed the job
    assert [run.id for run in lines.queue.withdraw_timed(lambda run: lines.limits.get(run.job) is None)] == [timed.id]
    lines.queue.readmit_all()
    assert lines.orphans == [1, waiting.id]


async def test_a_raised_limit_lets_waiting_runs_start() -> None:
    lines = Lines(a=1)
    runs = [lines.add("a") for _ in range(4)]
    assert await lines.ready() == [runs[0].id]
    lines.limits["a"] = 3
    lines.queue.readmit_all()
    assert await lines.ready() == [runs[1].id, runs[2].id]
