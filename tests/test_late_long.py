"""Late, missed and too-long runs against a real daemon on both backends: `late_after_s` with the
daemon's time from a FakeClock, missed fires reported at start, `max_duration_s` and
`max_duration_p95_factor` (with seeded history), and too-short runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import BACKENDS, Harness, wait_for
from notifyhelp import Hook, hook  # noqa: F401 (the fixture)

from jobd.app import Daemon
from jobd.config import Config
from jobd.models import RunStatus, iso_ms
from jobd.web import create_app
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
NOOP = {"handler": "sample_jobs:noop"}
SLEEPS = {"handler": "late_jobs:sleeps"}

StartDaemon = Callable[..., Awaitable[Harness]]


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Config]) -> StartDaemon:
    async def start(jobs: dict[str, Any], *, clock: FakeClock | None = None, **sections: Any) -> Harness:
        daemon = Daemon(make_config(jobs, **sections), environ={"PATH": "/usr/bin:/bin"}, clock=clock)
        return Harness(await aiohttp_client(create_app(daemon)), daemon)

    return start


def webhook(url: str) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, "retry_backoff_s": 0.05}


def minute(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def iso(when: datetime) -> str:
    return iso_ms(round(when.timestamp() * 1000)) or ""


async def records(h: Harness, job: str, event: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until the job has at least `count` notifications of `event`; return them."""

    async def found() -> list[dict[str, Any]] | None:
        body = await h.get_json(f"/api/v1/notifications?job={job}")
        matching = [n for n in body["notifications"] if n["event"] == event]
        return matching if len(matching) >= count else None

    result: list[dict[str, Any]] = await wait_for(found, timeout=20)
    return result


async def count_of(h: Harness, job: str, event: str) -> int:
    body = await h.get_json(f"/api/v1/notifications?job={job}")
    return sum(1 for n in body["notifications"] if n["event"] == event)


async def runs_of(h: Harness, query: str) -> list[dict[str, Any]]:
    return list(reversed((await h.get_json(f"/api/v1/runs?{query}&limit=500"))["runs"]))


async def jump(clock: FakeClock, when: datetime) -> None:
    """Move the fake time to `when`, then on by the sleeps of the loops on it (the scheduler's
    and the watcher's, at most a second each) until each has seen a time past `when`."""
    clock.set(when)
    await ticks(clock)


async def ticks(clock: FakeClock) -> None:
    """Move the fake time on, a sleep at a time, until the loops sleeping on it have looked again."""
    for _ in range(3):
        sleeper = await clock.sleeping()
        clock.set(max(clock.now(), sleeper.until))
        await clock.sleeping(since=sleeper.number)


async def test_a_fire_not_started_in_time_is_late_once(start: StartDaemon, hook: Hook) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start(
        {
            "blocker": SLEEPS,
            "tick": {
                **NOOP,
                "schedule": "*/5 * * * *",
                "late_after_s": 60,
                "notify": {"on_late": ["chat"]},
            },
        },
        clock=clock,
        workers={"concurrency": 1},
        notifiers={"chat": webhook(hook.url)},
    )
    blocker = await h.trigger("blocker", {"seconds": 60})
    await wait_for(_processing(h, blocker["id"]))
    await jump(clock, minute(5))
    [fire] = await wait_for(_runs(h, "job=tick"))
    assert fire["status"] == "PENDING" and fire["scheduled_for"] == iso(minute(5))
    clock.set(minute(5) + timedelta(seconds=30))
    await ticks(clock)
    assert await count_of(h, "tick", "late") == 0  # not yet: 30 s of its 60
    clock.set(minute(5) + timedelta(seconds=61))
    [late] = await records(h, "tick", "late")
    assert late["run_id"] == fire["id"] and late["notifier"] == "chat"
    assert late["payload"]["scheduled_for"] == iso(minute(5))
    assert "late_after_s 60" in late["payload"]["reason"]
    await ticks(clock)
    assert await count_of(h, "tick", "late") == 1  # once per fire
    await h.client.post(f"/api/v1/runs/{blocker['id']}/cancel")
    await h.finished(fire["id"])


def _runs(h: Harness, query: str) -> Callable[[], Awaitable[list[dict[str, Any]] | None]]:
    async def found() -> list[dict[str, Any]] | None:
        return await runs_of(h, query) or None

    return found


def _processing(h: Harness, run_id: int) -> Callable[[], Awaitable[bool]]:
    async def started() -> bool:
        return await h.status_of(run_id) is RunStatus.PROCESSING

    return started


async def test_fires_missed_while_down_are_reported_late_at_start(start: StartDaemon, hook: Hook) -> None:
    jobs = {
        "hourly": {**NOOP, "schedule": "0 * * * *", "late_after_s": 120, "notify": {"on_late": ["chat"]}},
        "relaxed": {**NOOP, "schedule": "0 * * * *", "notify": {"on_late": ["chat"]}},
    }
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start(jobs, clock=clock, notifiers={"chat": webhook(hook.url)})
    await jump(clock, minute(60))
    [fire] = await wait_for(_runs(h, "job=hourly"))
    await h.finished(fire["id"])
    await wait_for(_runs(h, "job=relaxed"))
    await h.client.close()  # down from 11:00 to 14:30: 12:00, 13:00 and 14:00 are missed

    clock.set(minute(270))
    h = await start(jobs, clock=clock, notifiers={"chat": webhook(hook.url)})
    [late] = await records(h, "hourly", "late")
    assert late["run_id"] is None
    assert late["payload"]["missed"] == 3 and late["payload"]["scheduled_for"] == iso(minute(240))
    assert "missed while jobd was down" in late["payload"]["reason"]
    await ticks(clock)
    assert await count_of(h, "hourly", "late") == 1  # the catch-up run of 14:00 is not reported again
    assert await count_of(h, "relaxed", "late") == 0
    for run in await runs_of(h, "status=PENDING,PROCESSING"):
        await h.finished(run["id"])


async def test_a_run_past_max_duration_is_long_once_and_not_killed(start: StartDaemon, hook: Hook) -> None:
    h = await start(
        {"slow": {**SLEEPS, "max_duration_s": 0.3, "timeout_s": 30, "notify": {"on_long": ["chat"]}}},
        notifiers={"chat": webhook(hook.url)},
    )
    run = await h.trigger("slow", {"seconds": 2.5})
    [long] = await records(h, "slow", "long")
    assert long["run_id"] == run["id"] and long["payload"]["run"]["status"] == "PROCESSING"
    assert "max_duration_s 0.3" in long["payload"]["reason"]
    assert (await h.finished(run["id"])).status is RunStatus.COMPLETED  # an alert, not a kill
    assert await count_of(h, "slow", "long") == 1


async def test_a_run_past_its_p95_factor_is_long(start: StartDaemon, hook: Hook) -> None:
    h = await start(
        {"usual": {**SLEEPS, "max_duration_p95_factor": 2.0, "notify": {"on_long": ["chat"]}}},
        notifiers={"chat": webhook(hook.url)},
    )
    for _ in range(3):  # the history: 0.2 s each
        quick = await h.trigger("usual", {"seconds": 0.2})
        assert (await h.finished(quick["id"])).status is RunStatus.COMPLETED
    assert await count_of(h, "usual", "long") == 0
    h.daemon.watcher._p95.clear()  # the p95 is otherwise read again every few minutes
    slow = await h.trigger("usual", {"seconds": 3})
    [long] = await records(h, "usual", "long")
    assert long["run_id"] == slow["id"]
    assert "2 × p95" in long["payload"]["reason"]
    await h.client.post(f"/api/v1/runs/{slow['id']}/cancel")
    await h.finished(slow["id"])


async def test_a_run_faster_than_min_duration_is_flagged_and_notified(start: StartDaemon, hook: Hook) -> None:
    h = await start(
        {
            "quick": {**NOOP, "min_duration_s": 5, "notify": {"on_failure": ["chat"]}},
            "fine": {**SLEEPS, "min_duration_s": 0.1, "notify": {"on_failure": ["chat"]}},
        },
        notifiers={"chat": webhook(hook.url)},
    )
    run = await h.trigger("quick")
    done = await h.finished(run["id"])
    assert done.status is RunStatus.PARTIAL
    assert done.error is not None and done.error.startswith("too short: ran ")
    assert "min_duration_s 5" in done.error
    [failure] = await records(h, "quick", "failure")
    assert failure["run_id"] == run["id"] and failure["payload"]["reason"] == "too_short"
    other = await h.trigger("fine", {"seconds": 0.3})
    assert (await h.finished(other["id"])).status is RunStatus.COMPLETED
