"""`misfire = "run_all"`: after downtime, one catch-up run per missed fire (the newest
`max_catchup_runs` of them), oldest first, on both backends, with time from a FakeClock; a
restart in the middle of a catch-up makes no fire twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import BACKENDS, Harness

from jobd.app import Daemon
from jobd.catchup import missed_fires
from jobd.config import Config, JobConfig
from jobd.cronspec import CronSpec
from jobd.models import TriggerSource, iso_ms
from jobd.scheduler import FireRequest, Scheduler
from jobd.web import create_app
from tests.fakeclock import FakeClock

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
NOOP = {"handler": "sample_jobs:noop"}
HOURLY = {**NOOP, "schedule": "0 * * * *", "misfire": "run_all"}

StartDaemon = Callable[..., Awaitable[Harness]]


def hour(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def iso(when: datetime) -> str:
    return iso_ms(round(when.timestamp() * 1000)) or ""


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Config]) -> StartDaemon:
    async def start(jobs: dict[str, Any], *, clock: FakeClock) -> Harness:
        daemon = Daemon(make_config(jobs), environ={"PATH": "/usr/bin:/bin"}, clock=clock)
        return Harness(await aiohttp_client(create_app(daemon)), daemon)

    return start


async def advance_to(clock: FakeClock, when: datetime) -> None:
    sleeper = await clock.sleeping()
    clock.set(when)
    if sleeper.until <= when:
        await clock.sleeping(since=sleeper.number)


async def runs_of(h: Harness, query: str) -> list[dict[str, Any]]:
    """Runs matching the query, oldest first."""
    return list(reversed((await h.get_json(f"/api/v1/runs?{query}&limit=500"))["runs"]))


async def finish_all(h: Harness) -> None:
    for run in await runs_of(h, "status=PENDING,PROCESSING"):
        await h.finished(run["id"])


async def first_life(start: StartDaemon, jobs: dict[str, Any], clock: FakeClock) -> None:
    """jobd runs from 10:00 to 11:00 (firing every 10 minutes or at 11:00), then stops."""
    h = await start(jobs, clock=clock)
    for minutes in range(10, 70, 10):
        await advance_to(clock, T0 + timedelta(minutes=minutes))
    await finish_all(h)
    await h.client.close()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_every_missed_fire_runs_oldest_first_up_to_the_limit(
    start: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {
        "all": HOURLY,
        "capped": {**HOURLY, "max_catchup_runs": 3},
        "once": {**HOURLY, "misfire": "run_once"},
        "late": {**HOURLY, "schedule": "0 12 * * *", "misfire_grace_s": 60},
    }
    clock = FakeClock(T0 + timedelta(seconds=1))
    await first_life(start, jobs, clock)

    clock.set(hour(6.5))  # 16:30: 12:00, 13:00, 14:00, 15:00 and 16:00 were missed
    h = await start(jobs, clock=clock)
    await clock.sleeping()  # catch-up fires are made before the loop first sleeps
    missed = [iso(hour(n)) for n in range(2, 7)]
    caught = await runs_of(h, "triggered_by=catchup&job=all")
    # One run per missed fire, in order, though overlap = skip: they wait for the job's one slot.
    assert [run["scheduled_for"] for run in caught] == missed
    assert [run["id"] for run in caught] == sorted(run["id"] for run in caught)
    capped = await runs_of(h, "triggered_by=catchup&job=capped")
    assert [run["scheduled_for"] for run in capped] == missed[-3:]  # the newest three
    assert [run["scheduled_for"] for run in await runs_of(h, "triggered_by=catchup&job=once")] == missed[-1:]
    assert await runs_of(h, "job=late") == []  # 12:00 is 4.5 hours old: past its grace
    for name in ("all", "capped"):
        job = (await h.get_json(f"/api/v1/jobs/{name}"))["job"]
        assert (job["last_fire_at"], job["next_run_at"]) == (iso(hour(6)), iso(hour(7)))
    out = capsys.readouterr().out
    assert "scheduler.catchup_limited" in out and "left_out=2" in out and "job=capped" in out
    # The fires left out can be backfilled; those made by the cron loop or the catch-up are not made again.
    response = await h.client.post(
        "/api/v1/jobs/capped/backfill", json={"from": iso(hour(1)), "to": iso(hour(6.5)), "max_runs": 10}
    )
    answer = await response.json()
    assert response.status == 202, answer
    assert [run["scheduled_for"] for run in answer["runs"]] == missed[:2]
    assert answer["existing"] == [iso(hour(1)), *missed[2:]]
    await finish_all(h)

    await advance_to(clock, hour(7))  # the schedule carries on as usual
    assert {run["job"] for run in await runs_of(h, "triggered_by=cron") if run["scheduled_for"] == iso(hour(7))} == {
        "all",
        "capped",
        "once",
    }
    await finish_all(h)
    await h.client.close()

    # Started again with nothing missed: no catch-up, no run made twice.
    clock.set(hour(7.5))
    h = await start(jobs, clock=clock)
    await clock.sleeping()
    assert len(await runs_of(h, "triggered_by=catchup&job=all")) == 5
    await h.client.close()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_restart_during_catch_up_makes_no_fire_twice(start: StartDaemon) -> None:
    jobs = {"all": {**HOURLY, "schedule": "*/10 * * * *"}}
    clock = FakeClock(T0 + timedelta(seconds=1))
    await first_life(start, jobs, clock)

    clock.set(hour(2) + timedelta(minutes=45))  # 11:10 to 12:40 missed: ten fires
    h = await start(jobs, clock=clock)
    # Stopped as soon as the first catch-up run exists: while the others are being made, or just
    # after (where the cut falls depends on the machine; the outcome must not).
    async with asyncio.timeout(10):
        while not any(run.triggered_by is TriggerSource.CATCHUP for run in h.daemon.runs.active.values()):
            await asyncio.sleep(0)
    await h.client.close()

    clock.set(hour(2) + timedelta(minutes=47))
    h = await start(jobs, clock=clock)
    await clock.sleeping()
    caught = await runs_of(h, "triggered_by=catchup")
    times = [run["scheduled_for"] for run in caught]
    expected = [iso(hour(1) + timedelta(minutes=10 * n)) for n in range(1, 11)]
    assert times == expected
    job = (await h.get_json("/api/v1/jobs/all"))["job"]
    assert job["last_fire_at"] == expected[-1]
    await finish_all(h)
    await h.client.close()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_backfill_leaves_a_due_fire_to_the_scheduler(start: StartDaemon) -> None:
    # 10:05 is due but not fired: jitter puts it up to an hour later (and 10:05:00.001 is before it
    # but for a one-in-a-million draw).
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start({"j": {**NOOP, "schedule": "*/5 * * * *", "jitter_s": 3600}}, clock=clock)
    await clock.sleeping()
    clock.set(T0 + timedelta(minutes=5, milliseconds=1))
    body = {"from": iso(T0), "dry_run": True}
    response = await h.client.post("/api/v1/jobs/j/backfill", json={**body, "to": iso(clock.now())})
    problem = await response.json()
    assert (response.status, problem["field"]) == (400, "to"), problem
    assert "2026-03-02T10:05:00.000Z is still to be made by the scheduler" in problem["detail"]
    response = await h.client.post("/api/v1/jobs/j/backfill", json={**body, "to": iso(T0 + timedelta(minutes=5))})
    assert (await response.json())["fire_times"] == [iso(T0)]
    await h.client.close()


def test_the_scheduler_carries_on_after_the_newest_fire_made() -> None:
    """A catch-up cut after three of its fires: a scheduler started from the last fire stored
    asks for exactly the rest."""
    config = JobConfig(name="j", command=("true",), schedule="0 * * * *", misfire="run_all")
    now = hour(6.5)

    async def nothing(request: FireRequest) -> None:
        del request

    first = Scheduler({"j": config}, nothing, clock=FakeClock(now), last_fires={"j": hour(1)})
    times = [request.scheduled_for for request in first.catch_up()]
    assert times == [hour(n) for n in range(2, 7)]
    assert {request.overlap for request in first.catch_up()} == {"allow"}
    again = Scheduler({"j": config}, nothing, clock=FakeClock(now), last_fires={"j": times[2]})
    assert [request.scheduled_for for request in again.catch_up()] == times[3:]


def test_missed_fires_across_a_dst_change_and_a_long_downtime() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    spec = CronSpec.parse("30 2 * * *", "j")
    last = datetime(2026, 3, 27, 2, 30, tzinfo=berlin)
    missed = missed_fires(spec, berlin, last, datetime(2026, 3, 31, 12, tzinfo=berlin), keep=10)
    assert [fire.astimezone(berlin).isoformat() for fire in missed.run] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert missed.left_out == 0
    every_second = CronSpec.parse("* * * * * *", "j")
    long = missed_fires(every_second, berlin, T0, T0 + timedelta(days=2), keep=3)
    assert long.run == [T0 + timedelta(days=2, seconds=-n) for n in (2, 1, 0)]
    assert long.left_out_capped and long.first_left_out == T0 + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("max_catchup_runs = 0", "jobs.j.max_catchup_runs: 0 is out of range (must be from 1 to 1000)"),
        ('max_catchup_runs = "5"', "jobs.j.max_catchup_runs: must be an integer"),
        ('misfire = "all"', "jobs.j.misfire:"),
    ],
)
def test_jobd_check_refuses_bad_catch_up_keys(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "jobd.toml"
    misfire = "" if line.startswith("misfire") else 'misfire = "run_all"\n'
    path.write_text(f'[jobs.j]\ncommand = ["true"]\nschedule = "@hourly"\n{misfire}{line}\n')
    result = subprocess.run(
        [sys.executable, "-m", "jobd", "check", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert error in result.stderr, result.stderr
    if "misfire =" in line:
        assert "run_all" in result.stderr
    path.write_text('[jobs.j]\ncommand = ["true"]\nschedule = "@hourly"\nmisfire = "run_all"\nmax_catchup_runs = 5\n')
    ok = subprocess.run([sys.executable, "-m", "jobd", "check", "-c", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
