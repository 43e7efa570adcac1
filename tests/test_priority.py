"""Priorities: among startable runs the highest starts first, FIFO within a priority, and a
waiting run's priority rises with its waiting time. End to end on both backends (a busy worker
pool, a full group, an injected clock), the trigger's `priority` field, and the ready queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import BACKENDS, wait_for
from group_jobs import Seen
from test_run_at import jobd_cli

from jobd.lifecycle.groups import effective_priority, order_key
from jobd.lifecycle.readyqueue import ReadyQueue
from jobd.models import Run, RunStatus, TriggerSource, now_ms

both = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

COUNTED = {"handler": "group_jobs:counted", "overlap": "allow", "max_concurrency": 10}
GATED = {"handler": "group_jobs:gated", "overlap": "allow", "max_concurrency": 10}


@pytest.fixture(autouse=True)
def seen() -> Iterator[type[Seen]]:
    Seen.clear()
    yield Seen
    Seen.clear()


async def start_after(h: Any, blocker: dict[str, Any], queued: list[dict[str, Any]]) -> list[int]:
    """Release the blocker, wait for every queued run, and return the queued runs' start order."""
    Seen.releases[blocker["id"]].set()
    for run in queued:
        assert (await h.finished(run["id"], timeout=30)).status is RunStatus.COMPLETED
    ids = {run["id"] for run in queued}
    return [run_id for run_id in Seen.started if run_id in ids]


async def blocked(h: Any, job: str) -> dict[str, Any]:
    blocker = await h.trigger(job)
    await wait_for(lambda: blocker["id"] in Seen.releases)
    return blocker


@both
async def test_the_highest_priority_starts_first_fifo_within_a_priority(start_daemon):
    jobs = {"hold": GATED, "work": COUNTED, "urgent": {**COUNTED, "priority": 7}}
    h = await start_daemon(jobs, workers={"concurrency": 1, "priority_aging_s": 0})
    blocker = await blocked(h, "hold")
    queued = []
    for job, priority in [("work", 0), ("work", 5), ("work", None), ("work", 10), ("urgent", None), ("work", 5)]:
        body = {} if priority is None else {"priority": priority}
        queued.append(await h.trigger(job, **body))
    assert [run["priority"] for run in queued] == [0, 5, 0, 10, 7, 5]
    order = await start_after(h, blocker, queued)
    assert order == [queued[i]["id"] for i in (3, 4, 1, 5, 0, 2)]


@both
async def test_runs_waiting_for_a_full_group_start_by_priority(start_daemon):
    jobs = {"hold": {**GATED, "groups": ["db"]}, "work": {**COUNTED, "groups": ["db"]}, "other": COUNTED}
    h = await start_daemon(
        jobs, groups={"db": {"max_concurrency": 1}}, workers={"concurrency": 4, "priority_aging_s": 0}
    )
    blocker = await blocked(h, "hold")
    queued = [await h.trigger("work", priority=p) for p in (1, 3, 2, 3)]
    free = await h.trigger("other", priority=-5)  # not in the group: starts now on a free worker
    await h.finished(free["id"])
    assert [await h.status_of(run["id"]) for run in queued] == [RunStatus.PENDING] * 4
    order = await start_after(h, blocker, queued)
    assert order == [queued[i]["id"] for i in (1, 3, 2, 0)]


@both
async def test_an_old_run_overtakes_newer_ones_of_a_higher_priority(start_daemon):
    """With an injected clock: 1 priority level per minute waited. A run of priority 0 that has
    waited 10 minutes (effective 10) starts before a new one of priority 5, after one of 20."""
    h = await start_daemon({"hold": GATED, "work": COUNTED}, workers={"concurrency": 1, "priority_aging_s": 60})
    blocker = await blocked(h, "hold")
    now = [now_ms()]
    h.daemon.runs.clock = lambda: now[0]
    old = await h.trigger("work")
    now[0] += 600_000
    five = await h.trigger("work", priority=5)
    twenty = await h.trigger("work", priority=20)
    h.daemon.runs.clock = now_ms
    order = await start_after(h, blocker, [old, five, twenty])
    assert order == [twenty["id"], old["id"], five["id"]]


@both
async def test_a_trigger_priority_is_validated_and_stored(start_daemon):
    h = await start_daemon({"work": {**COUNTED, "priority": 2}}, workers={"concurrency": 1})
    for bad in ("high", 1.5, True, 1001, -1001):
        problem = await h.trigger("work", priority=bad, expect=400)
        assert problem["status"] == 400 and problem["field"] == "priority", problem
        assert problem["detail"].startswith("priority must be an integer from -1000 to 1000")
    response = await h.client.post(
        "/api/v1/jobs/work/trigger", json={"priority": 4, "runs": [{}, {"priority": 9}, {"priority": None}]}
    )
    assert response.status == 202
    assert [run["priority"] for run in (await response.json())["runs"]] == [4, 9, 4]
    assert (await h.trigger("work", priority=-5.0))["priority"] == -5  # an integer, as JSON Schema counts
    response = await h.client.post("/api/v1/jobs/work/trigger", json={"runs": [{}, {"priority": "x"}]})
    problem = await response.json()
    assert response.status == 400 and problem["field"] == "runs[1].priority", problem
    assert problem["detail"].startswith("runs[1].priority must be an integer")
    run = await h.trigger("work", priority=None)
    assert run["priority"] == 2  # null: the job's
    stored = await h.finished(run["id"])
    assert stored.priority == 2
    assert (await h.get_json(f"/api/v1/runs/{run['id']}"))["run"]["priority"] == 2


@both
async def test_jobd_trigger_priority_against_a_live_daemon(start_daemon):
    h = await start_daemon({"work": COUNTED})
    url = str(h.client.make_url("")).rstrip("/")
    code, out, err = await jobd_cli("trigger", "work", "--url", url, "--json", "--priority", "7")
    assert code == 0, err
    run = json.loads(out)["run"]
    assert run["priority"] == 7
    await h.finished(run["id"])
    code, out, err = await jobd_cli("trigger", "work", "--url", url, "--priority", "5000")
    assert code == 1 and err.count("\n") == 1 and "priority" in err, err
    code, out, err = await jobd_cli("trigger", "work", "--url", url, "--priority", "high")
    assert code == 2 and out == "", err


# -- the ready queue -------------------------------------------------------------------------------


class Queue:
    """A ready queue over job limits, job → groups and group limits, with a clock to move."""

    def __init__(
        self, limits: dict[str, int], groups: dict[str, tuple[str, ...]] | None = None, **group_limits: int
    ) -> None:
        self.now = 1_000_000
        self.groups = groups or {}
        self.group_limits = group_limits
        self.queue = ReadyQueue(
            limit_of=limits.get,
            clock=lambda: self.now,
            orphaned=lambda run: None,
            groups_of=lambda job: self.groups.get(job, ()),
            group_limit_of=self.group_limits.get,
            aging_ms=lambda: 60_000,
        )
        self.next_id = 0

    def add(self, job: str, priority: int = 0) -> Run:
        self.next_id += 1
        run = Run(
            id=self.next_id,
            job=job,
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.API,
            created_at=self.now,
            priority=priority,
        )
        self.queue.put(run)
        return run

    async def ready(self) -> list[int]:
        taken = []
        while True:
            try:
                async with asyncio.timeout(0.05):
                    taken.append((await self.queue.get()).id)
            except TimeoutError:
                return taken


async def test_the_queue_orders_by_priority_then_age() -> None:
    q = Queue({"a": 10, "b": 10})
    q.add("a", 0)
    q.now += 120_000  # two minutes later: the first run's effective priority is 2
    q.add("b", 1)
    q.add("a", 3)
    q.add("b", 2)
    assert await q.ready() == [3, 1, 4, 2]  # 3; then 2 (run 1, older) before 2 (run 4); then 1


async def test_a_run_blocked_by_one_group_holds_no_slot_of_the_others() -> None:
    q = Queue({"ab": 10, "a": 10, "b": 10}, {"ab": ("a", "b"), "a": ("a",), "b": ("b",)}, a=1, b=1)
    q.add("b")
    assert await q.ready() == [1]  # b is full now
    q.add("ab", priority=5)  # waits for b, holding nothing of a
    q.add("a")
    assert await q.ready() == [3]
    q.queue.release("b", 1)  # b frees, but a is still full: ab still waits
    assert await q.ready() == []
    q.queue.release("a", 3)
    assert await q.ready() == [2]


async def test_a_freed_group_slot_goes_to_the_best_waiting_run_of_any_job() -> None:
    q = Queue({"x": 10, "y": 10}, {"x": ("g",), "y": ("g",)}, g=2)
    for job, priority in [("x", 0), ("x", 0), ("y", 1), ("x", 4), ("y", 0)]:
        q.add(job, priority)
    assert await q.ready() == [4, 3]
    q.queue.release("x", 4)
    assert await q.ready() == [1]
    q.queue.release("y", 3)
    q.queue.release("x", 1)
    assert await q.ready() == [2, 5]


def test_effective_priority_rises_by_one_per_aging_interval() -> None:
    assert effective_priority(3, ready_at_ms=0, now_ms=90_000, aging_ms=60_000) == 4.5
    assert effective_priority(3, ready_at_ms=0, now_ms=90_000, aging_ms=0) == 3
    # The order key agrees: the older run of priority 0 has overtaken the newer one of priority 1.
    assert order_key(0, 0, 60_000) < order_key(1, 90_000, 60_000)
    assert order_key(1, 10, 0) < order_key(0, 0, 0)


async def test_a_worker_that_stops_waiting_passes_its_wake_up_on() -> None:
    q = Queue({"a": 10})
    first = asyncio.create_task(q.queue.get())
    second = asyncio.create_task(q.queue.get())
    await asyncio.sleep(0)
    run = q.add("a")  # wakes the first worker ...
    first.cancel()  # ... which stops before it takes the run
    assert await asyncio.wait_for(second, 2) is run
    with pytest.raises(asyncio.CancelledError):
        await first
    gone = asyncio.create_task(q.queue.get())
    await asyncio.sleep(0)
    gone.cancel()  # stops while nothing woke it
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert [q.add("a").id] == await q.ready()
