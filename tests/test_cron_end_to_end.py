"""The cron scheduler end to end: a real Daemon on each backend (a SQLite file, or PostgreSQL as a
one-node cluster), its time from a FakeClock.

The scheduler sleeps on the fake clock; `advance_to` moves the time to the next fire and returns
once the scheduler has fired what was due (runs created and committed) and sleeps again. Runs
themselves run for real on the worker pool.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import sched_jobs
from conftest import BACKENDS, Harness, sqlite_only, wait_for
from process import DaemonProcess
from ssehelp import SSEReader

from jobd.app import Daemon
from jobd.config import Config, load_config
from jobd.cronspec import CronSpec
from jobd.models import iso_ms
from jobd.scheduler import FireRequest, Scheduler
from jobd.web import create_app
from tests.fakeclock import FakeClock

UTC = UTC
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
EVERY_MINUTE = "* * * * *"
NOOP = {"handler": "sample_jobs:noop"}
# Fires never skip, even when the previous quick run has not quite finished yet.
NOOP_ALLOW = {**NOOP, "overlap": "allow", "max_concurrency": 10}
SLEEPY = {"handler": "sample_jobs:sleepy"}  # a cron fire has no params: it sleeps 30 s, or until cancelled
STUBBORN = {"handler": "sched_jobs:stubborn"}

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def minute(n: float, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=n)


def iso(when: datetime) -> str:
    return iso_ms(round(when.timestamp() * 1000)) or ""


async def advance_to(clock: FakeClock, when: datetime) -> None:
    """Move the fake time to `when`; return once the scheduler has done what was due and sleeps again."""
    sleeper = await clock.sleeping()
    clock.set(when)
    if sleeper.until <= when:
        await clock.sleeping(since=sleeper.number)


StartDaemon = Callable[..., Awaitable[Harness]]


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Config]) -> StartDaemon:
    async def start(
        jobs: dict[str, Any] | None = None, *, clock: FakeClock, config: Config | None = None, **sections: Any
    ) -> Harness:
        daemon = Daemon(config or make_config(jobs, **sections), environ={"PATH": "/usr/bin:/bin"}, clock=clock)
        return Harness(await aiohttp_client(create_app(daemon)), daemon)

    return start


async def job_of(h: Harness, name: str) -> dict[str, Any]:
    return (await h.get_json(f"/api/v1/jobs/{name}"))["job"]


async def runs_of(h: Harness, query: str) -> list[dict[str, Any]]:
    """Runs matching the query, oldest first."""
    return list(reversed((await h.get_json(f"/api/v1/runs?{query}&limit=500"))["runs"]))


async def statuses(h: Harness, job: str) -> list[str]:
    return [run["status"] for run in await runs_of(h, f"job={job}")]


async def settle(h: Harness, job: str, expected: list[str]) -> None:
    """Wait until the job's runs, oldest first, have exactly these statuses."""

    async def matches() -> bool:
        return await statuses(h, job) == expected

    try:
        await wait_for(matches, timeout=10)
    except AssertionError:
        raise AssertionError(f"{job}: {await statuses(h, job)} never became {expected}") from None


async def cancel(h: Harness, run_id: int) -> None:
    response = await h.client.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status in (200, 409), await response.text()


def skipped_events(h: Harness, since: int) -> list[Any]:
    return [event for event in h.daemon.bus.since(since) or [] if event.type == "fire_skipped"]


# -- fires ------------------------------------------------------------------------------------------


async def test_a_cron_fire_creates_a_run_with_the_exact_scheduled_time(start: StartDaemon) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start({"tick": {**NOOP, "schedule": "*/5 * * * *"}}, clock=clock)
    job = await job_of(h, "tick")
    assert (job["next_run_at"], job["last_fire_at"]) == (iso(minute(5)), None)
    await advance_to(clock, minute(5))
    [run] = await runs_of(h, "triggered_by=cron")
    assert (run["job"], run["triggered_by"], run["scheduled_for"]) == ("tick", "cron", "2026-03-02T10:05:00.000Z")
    assert (await h.finished(run["id"])).status.value == "COMPLETED"
    await advance_to(clock, minute(10))
    cron = await runs_of(h, "job=tick&triggered_by=cron")
    assert [r["scheduled_for"] for r in cron] == [iso(minute(5)), iso(minute(10))]
    job = await job_of(h, "tick")
    assert (job["last_fire_at"], job["next_run_at"], job["skipped_fires"]) == (iso(minute(10)), iso(minute(15)), 0)
    stored = (await h.daemon.store.job_states())["tick"]
    assert stored.last_fire_at == round(minute(10).timestamp() * 1000)


async def test_jitter_delays_the_run_but_not_its_scheduled_time(start: StartDaemon) -> None:
    clock = FakeClock(T0)
    h = await start({"spread": {**NOOP, "schedule": EVERY_MINUTE, "jitter_s": 30}}, clock=clock)
    await advance_to(clock, minute(1, base=T0 + timedelta(seconds=30)))  # past the jitter window
    [run] = await runs_of(h, "triggered_by=cron")
    assert run["scheduled_for"] == iso(minute(1))


async def test_the_job_shows_its_schedule_and_next_run_in_its_zone(start: StartDaemon) -> None:
    # Ten seconds before Skopje springs forward (02:00 CET -> 03:00 CEST): 02:30 does not exist
    # that night, so the daily 02:30 job fires at the end of the gap, 03:00 CEST.
    clock = FakeClock(datetime(2026, 3, 29, 0, 59, 50, tzinfo=UTC))
    h = await start(
        {
            "nightly": {**NOOP, "schedule": "30 2 * * *", "timezone": "Europe/Skopje"},
            "by-hand": NOOP,
            "spread": {**NOOP, "schedule": "H * * * *"},
        },
        clock=clock,
    )
    job = await job_of(h, "nightly")
    assert {
        key: job[key]
        for key in (
            "schedule",
            "timezone",
            "next_run_at",
            "next_run_at_local",
            "last_fire_at",
            "paused",
            "skipped_fires",
            "is_running",
        )
    } == {
        "schedule": "30 2 * * *",
        "timezone": "Europe/Skopje",
        "next_run_at": "2026-03-29T01:00:00.000Z",
        "next_run_at_local": "2026-03-29T03:00:00+02:00",
        "last_fire_at": None,
        "paused": False,
        "skipped_fires": 0,
        "is_running": False,
    }
    await advance_to(clock, datetime(2026, 3, 29, 1, tzinfo=UTC))
    [run] = await runs_of(h, "job=nightly")
    assert run["scheduled_for"] == "2026-03-29T01:00:00.000Z"
    job = await job_of(h, "nightly")
    assert job["last_fire_at"] == "2026-03-29T01:00:00.000Z"
    assert (job["next_run_at"], job["next_run_at_local"]) == ("2026-03-30T00:30:00.000Z", "2026-03-30T02:30:00+02:00")
    assert job["schedule_description"] == "at 02:30 every day"
    manual = await job_of(h, "by-hand")
    assert (manual["schedule"], manual["next_run_at"], manual["next_run_at_local"]) == (None, None, None)
    # An H field is described by the value it hashes to for this job: the minute the scheduler fires at.
    spread = await job_of(h, "spread")
    fires_at = datetime.fromisoformat(spread["next_run_at"].replace("Z", "+00:00"))
    assert spread["schedule_description"] == f"hourly at minute {fires_at.minute}"


# -- overlap ----------------------------------------------------------------------------------------

# Three fires of a job whose runs last until cancelled; statuses of its runs, oldest first.
OVERLAP = [
    pytest.param("skip", {}, [["PROCESSING"], ["PROCESSING"], ["PROCESSING"]], 2, ["CANCELLED"], id="skip"),
    pytest.param(
        "buffer_one",
        {},
        [["PROCESSING"], ["PROCESSING", "PENDING"], ["PROCESSING", "PENDING"]],
        1,
        ["CANCELLED", "PROCESSING"],
        id="buffer_one",
    ),
    pytest.param(
        "queue",
        {"max_concurrency": 3},
        [["PROCESSING"], ["PROCESSING", "PENDING"], ["PROCESSING", "PENDING", "PENDING"]],
        0,
        ["CANCELLED", "PROCESSING", "PENDING"],
        id="queue",
    ),
    pytest.param(
        "allow",
        {"max_concurrency": 2},
        [["PROCESSING"], ["PROCESSING", "PROCESSING"], ["PROCESSING", "PROCESSING", "PENDING"]],
        0,
        ["CANCELLED", "PROCESSING", "PROCESSING"],
        id="allow",
    ),
    pytest.param(
        "replace",
        {},
        [["PROCESSING"], ["CANCELLED", "PROCESSING"], ["CANCELLED", "CANCELLED", "PROCESSING"]],
        0,
        ["CANCELLED", "CANCELLED", "CANCELLED"],
        id="replace",
    ),
]


@pytest.mark.parametrize(("policy", "options", "after_fires", "skipped", "after_cancel"), OVERLAP)
async def test_overlap_policies_under_cron_fires(
    start: StartDaemon,
    policy: str,
    options: dict[str, Any],
    after_fires: list[list[str]],
    skipped: int,
    after_cancel: list[str],
) -> None:
    clock = FakeClock(T0)
    h = await start(
        {"slow": {**SLEEPY, "schedule": EVERY_MINUTE, "overlap": policy, **options}},
        clock=clock,
        workers={"concurrency": 4},
    )
    first_event = h.daemon.bus.last_id
    for n, expected in enumerate(after_fires, start=1):
        await advance_to(clock, minute(n))
        await settle(h, "slow", expected)
    runs = await runs_of(h, "job=slow")
    assert all(r["triggered_by"] == "cron" for r in runs)
    assert [r["scheduled_for"] for r in runs] == [iso(minute(n)) for n in range(1, 4 - skipped)]
    job = await job_of(h, "slow")
    assert job["skipped_fires"] == skipped
    assert job["last_skipped_at"] == (iso(minute(3)) if skipped else None)
    assert job["last_fire_at"] == iso(minute(3))
    assert job["is_running"] is True
    events = skipped_events(h, first_event)
    assert [e.data["scheduled_for"] for e in events] == [iso(minute(n)) for n in range(4 - skipped, 4)]
    assert all(e.job == "slow" and e.data["job"] == "slow" and e.data["reason"] for e in events)
    assert (await h.daemon.store.job_states())["slow"].skipped_fires == skipped
    if policy == "replace":
        assert all("replaced by a newer run" in (r["error"] or "") for r in runs[:-1])
    # Cancel the oldest run still going: what waited behind it moves up.
    oldest = next(r for r in runs if r["status"] in ("PENDING", "PROCESSING"))
    await cancel(h, oldest["id"])
    await settle(h, "slow", after_cancel)
    for run in await runs_of(h, "job=slow"):
        await cancel(h, run["id"])


async def test_replace_does_not_hold_up_the_scheduler_while_the_old_run_stops(start: StartDaemon) -> None:
    sched_jobs.releases.clear()
    clock = FakeClock(T0)
    # A long kill grace: the old run is not left behind while the test still waits for it.
    h = await start(
        {
            "stubborn": {**STUBBORN, "schedule": EVERY_MINUTE, "overlap": "replace"},
            "other": {**NOOP_ALLOW, "schedule": EVERY_MINUTE},
        },
        clock=clock,
        workers={"kill_grace_s": 30},
    )
    try:
        await advance_to(clock, minute(1))
        await settle(h, "stubborn", ["PROCESSING"])
        # The old run takes its time to stop; the fire returns at once and the new run waits for the slot.
        await advance_to(clock, minute(2))
        await settle(h, "stubborn", ["PROCESSING", "PENDING"])
        assert [r["scheduled_for"] for r in await runs_of(h, "job=other")] == [iso(minute(1)), iso(minute(2))]
        assert (await job_of(h, "stubborn"))["next_run_at"] == iso(minute(3))
        old, new = await runs_of(h, "job=stubborn")
        sched_jobs.releases[old["id"]].set()
        await settle(h, "stubborn", ["CANCELLED", "PROCESSING"])
        sched_jobs.releases[new["id"]].set()
        await cancel(h, new["id"])
    finally:
        for release in sched_jobs.releases.values():
            release.set()
        await h.client.close()
        sched_jobs.releases.clear()


@pytest.mark.parametrize("policy", ["skip", "buffer_one", "replace"])
async def test_a_run_whose_end_is_still_being_committed_does_not_hold_back_the_next_fire(
    start: StartDaemon, tmp_path: Path, policy: str, backend: str
) -> None:
    sqlite_only(
        backend,
        "holds SQLite's write lock to keep a finished run's end uncommitted; in a cluster a fire "
        "counts the job's runs in the database, under the job's lock",
    )
    sched_jobs.releases.clear()
    clock = FakeClock(T0)
    h = await start(
        {"gated": {"handler": "sched_jobs:gated", "schedule": EVERY_MINUTE, "overlap": policy}}, clock=clock
    )
    await advance_to(clock, minute(1))
    await settle(h, "gated", ["PROCESSING"])
    [first] = await runs_of(h, "job=gated")
    # Another connection holds SQLite's write lock, so the run's end waits to be committed.
    other = sqlite3.connect(tmp_path / "state" / "jobd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        sched_jobs.releases[first["id"]].set()
        # Over (no longer counted as running) but still tracked until its end is in the store.
        await wait_for(lambda: not h.daemon.runs.is_running("gated"))
        assert first["id"] in h.daemon.runs.active
        sleeper = await clock.sleeping()
        clock.set(minute(2))
        await wait_for(lambda: len(h.daemon.runs.active) == 2 or h.daemon.runs.job_state("gated").skipped_fires)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await clock.sleeping(since=sleeper.number)
    runs = await runs_of(h, "job=gated")
    assert [(r["status"], r["scheduled_for"]) for r in runs] == [
        ("COMPLETED", iso(minute(1))),
        ("PROCESSING", iso(minute(2))),
    ]
    assert (await job_of(h, "gated"))["skipped_fires"] == 0
    sched_jobs.releases[runs[1]["id"]].set()
    await h.finished(runs[1]["id"])
    sched_jobs.releases.clear()


async def test_a_manual_trigger_may_override_the_policy_for_itself(start: StartDaemon) -> None:
    clock = FakeClock(T0)
    h = await start({"slow": {**SLEEPY, "schedule": EVERY_MINUTE, "max_concurrency": 2}}, clock=clock)
    await advance_to(clock, minute(1))
    await settle(h, "slow", ["PROCESSING"])
    [cron] = await runs_of(h, "job=slow")
    problem = await h.trigger("slow", expect=409)
    assert problem["status"] == 409 and str(cron["id"]) in problem["detail"]
    manual = await h.trigger("slow", {"seconds": 30}, overlap="allow")
    assert manual["triggered_by"] == "api" and manual["scheduled_for"] is None
    await settle(h, "slow", ["PROCESSING", "PROCESSING"])
    # The override was for that trigger only: the next cron fire still skips.
    await advance_to(clock, minute(2))
    job = await job_of(h, "slow")
    assert (job["skipped_fires"], len(await runs_of(h, "job=slow"))) == (1, 2)
    for run_id in (cron["id"], manual["id"]):
        await cancel(h, run_id)


async def test_manual_triggers_never_shift_the_schedule(start: StartDaemon) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start({"tick": {**NOOP, "schedule": "*/5 * * * *"}}, clock=clock)
    await advance_to(clock, minute(2))
    manual = await h.trigger("tick")
    await h.finished(manual["id"])
    job = await job_of(h, "tick")
    assert (job["next_run_at"], job["last_fire_at"]) == (iso(minute(5)), None)
    await advance_to(clock, minute(5))
    runs = await runs_of(h, "job=tick")
    assert [(r["triggered_by"], r["scheduled_for"]) for r in runs] == [("api", None), ("cron", iso(minute(5)))]


async def test_skipped_fires_are_counted_and_published_under_load(start: StartDaemon) -> None:
    count = 60
    clock = FakeClock(T0)
    # Far more runs than workers: most wait PENDING, which counts as in progress for skip.
    h = await start(
        {f"j{i:02d}": {**SLEEPY, "schedule": EVERY_MINUTE} for i in range(count)},
        clock=clock,
        workers={"concurrency": 2},
    )
    first_event = h.daemon.bus.last_id
    for n in (1, 2, 3, 4):
        await advance_to(clock, minute(n))
    assert len(await runs_of(h, "triggered_by=cron")) == count
    events = skipped_events(h, first_event)
    assert len(events) == 3 * count
    assert {(e.job, e.data["scheduled_for"]) for e in events} == {
        (f"j{i:02d}", iso(minute(n))) for i in range(count) for n in (2, 3, 4)
    }
    jobs = (await h.get_json("/api/v1/jobs"))["jobs"]
    assert {j["skipped_fires"] for j in jobs} == {3}
    assert {j["last_skipped_at"] for j in jobs} == {iso(minute(4))}
    stored = await h.daemon.store.job_states()
    assert {stored[f"j{i:02d}"].skipped_fires for i in range(count)} == {3}


async def test_a_skipped_fire_is_sent_on_the_firehose_and_replayed(start: StartDaemon) -> None:
    clock = FakeClock(T0)
    h = await start({"slow": {**SLEEPY, "schedule": EVERY_MINUTE}, "other": NOOP}, clock=clock)
    queries = ("", "?job=slow", "?job=other", "?status=FAILED", "?job=other&status=PENDING")
    streams = {query: SSEReader(await h.client.get(f"/api/v1/events{query}")) for query in queries}
    for stream in streams.values():
        await stream.until(lambda m: m.type == "summary")
    await advance_to(clock, minute(1))
    [run] = await runs_of(h, "job=slow")
    await advance_to(clock, minute(2))  # the run of minute 1 is still going: skipped
    expected = {
        "type": "fire_skipped",
        "job": "slow",
        "scheduled_for": iso(minute(2)),
        "skipped_at": iso(minute(2)),
        "skipped_fires": 1,
        "active_run_ids": [run["id"]],
    }
    skips = {}
    for query in ("", "?job=slow", "?status=FAILED"):
        skip = (await streams[query].until(lambda m: m.type == "fire_skipped"))[-1]
        assert {k: v for k, v in skip.data.items() if k != "reason"} == expected, query
        assert f"already has run {run['id']}" in skip.data["reason"]
        skips[query] = skip
    assert len({skip.id for skip in skips.values()}) == 1
    # Streams for another job see the next event of theirs and no skip before it.
    other = await h.trigger("other")
    for query in ("?job=other", "?job=other&status=PENDING"):
        seen = await streams[query].until(
            lambda m: (m.type == "status_update" and m.data["run_id"] == other["id"]) or m.type == "fire_skipped"
        )
        assert seen[-1].type == "status_update", query
    # Replayed after a reconnect, once, with its own id.
    skip = skips[""]
    response = await h.client.get("/api/v1/events", headers={"Last-Event-ID": str(skip.id - 1)})
    replay = SSEReader(response)
    opening = await replay.until(lambda m: m.type == "summary")
    assert [(m.id, m.data) for m in opening if m.type == "fire_skipped"] == [(skip.id, skip.data)]
    response.close()
    for stream in streams.values():
        stream.response.close()
    await cancel(h, run["id"])


# -- pause, failures ----------------------------------------------------------------------------------


async def test_pause_and_resume_through_the_api(start: StartDaemon) -> None:
    clock = FakeClock(T0)
    h = await start(
        {"tick": {**NOOP_ALLOW, "schedule": EVERY_MINUTE}, "other": {**NOOP_ALLOW, "schedule": EVERY_MINUTE}},
        clock=clock,
    )
    await advance_to(clock, minute(1))
    response = await h.client.post("/api/v1/jobs/tick/pause")
    assert response.status == 200
    job = (await response.json())["job"]
    assert (job["paused"], job["next_run_at"], job["next_run_at_local"]) == (True, None, None)
    assert (await h.daemon.store.job_states())["tick"].paused is True
    for n in (2, 3):
        await advance_to(clock, minute(n))
    assert len(await runs_of(h, "job=tick")) == 1
    assert [r["scheduled_for"] for r in await runs_of(h, "job=other")] == [iso(minute(n)) for n in (1, 2, 3)]
    listed = {j["name"]: j for j in (await h.get_json("/api/v1/jobs"))["jobs"]}
    assert listed["tick"]["paused"] is True and listed["tick"]["next_run_at"] is None
    response = await h.client.post("/api/v1/jobs/tick/resume")
    job = (await response.json())["job"]
    assert (job["paused"], job["next_run_at"]) == (False, iso(minute(4)))
    await advance_to(clock, minute(4))
    assert [r["scheduled_for"] for r in await runs_of(h, "job=tick")] == [iso(minute(1)), iso(minute(4))]


async def test_no_fire_slips_in_while_a_pause_is_being_committed(
    start: StartDaemon, tmp_path: Path, backend: str
) -> None:
    sqlite_only(
        backend,
        "holds SQLite's write lock to keep the pause uncommitted; in a cluster a fire reads the "
        "pause from the database in its own transaction",
    )
    clock = FakeClock(T0)
    # "other" keeps the scheduler taking naps on the clock after tick is paused.
    h = await start(
        {"tick": {**NOOP_ALLOW, "schedule": EVERY_MINUTE}, "other": {**NOOP_ALLOW, "schedule": "@daily"}}, clock=clock
    )
    await clock.sleeping()
    # Another connection holds SQLite's write lock, so the pause waits to be committed.
    other = sqlite3.connect(tmp_path / "state" / "jobd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pausing = asyncio.ensure_future(h.client.post("/api/v1/jobs/tick/pause"))
        await wait_for(lambda: h.daemon.runs.job_state("tick").paused)
        asleep = clock.pending()
        assert asleep is not None
        clock.set(minute(1))
        # The scheduler either fires (the run is tracked before it is committed) or sleeps again.
        await wait_for(lambda: h.daemon.runs.active_of("tick") or clock.pending(since=asleep.number))
    finally:
        other.execute("ROLLBACK")
        other.close()
    response = await pausing
    assert response.status == 200 and (await response.json())["job"]["paused"] is True
    await clock.sleeping(since=asleep.number)  # a fire, had there been one, is committed by now
    assert await runs_of(h, "job=tick") == []


async def test_consecutive_failures_show_in_the_job_state(start: StartDaemon) -> None:
    clock = FakeClock(T0)
    h = await start(
        {"bad": {"handler": "sample_jobs:fails", "schedule": EVERY_MINUTE, "alert_after_failures": 3}}, clock=clock
    )
    for n in (1, 2, 3):
        await advance_to(clock, minute(n))
        [run] = (await runs_of(h, "job=bad"))[-1:]
        await h.finished(run["id"])
        job = await job_of(h, "bad")
        assert (job["consecutive_failures"], job["failing"]) == (n, n >= 3)
    assert job["last_run"]["status"] == "FAILED" and job["last_run"]["error"] == "ValueError: boom"
    assert (await h.daemon.store.job_states())["bad"].consecutive_failures == 3


# -- catch-up after downtime --------------------------------------------------------------------------


async def test_catch_up_after_a_restart(start: StartDaemon, make_config: Callable[..., Config]) -> None:
    hourly = {**NOOP, "schedule": "0 * * * *"}
    jobs = {
        "grace": hourly,  # default misfire = run_once, misfire_grace_s = 3600
        "tight": {**hourly, "misfire_grace_s": 60},
        "skip": {**hourly, "misfire": "skip"},
        "paused": hourly,
    }
    clock = FakeClock(T0 + timedelta(seconds=1))
    h = await start(jobs, clock=clock)
    await advance_to(clock, minute(60))
    for run in await runs_of(h, "triggered_by=cron"):
        await h.finished(run["id"])
    await h.client.post("/api/v1/jobs/paused/pause")
    await h.client.close()  # jobd stops at 11:00; 12:00, 13:00 and 14:00 are missed

    clock.set(minute(270))  # 14:30: the newest missed fire is 30 minutes old
    h = await start({**jobs, "new": hourly}, clock=clock)
    await clock.sleeping()  # catch-up fires are issued before the loop first sleeps
    [catchup] = await runs_of(h, "triggered_by=catchup")
    assert (catchup["job"], catchup["scheduled_for"]) == ("grace", iso(minute(240)))
    assert len(await runs_of(h, "job=grace")) == 2
    for name in ("tight", "skip", "paused"):
        assert len(await runs_of(h, f"job={name}")) == 1, name
    assert await runs_of(h, "job=new") == []
    job = await job_of(h, "grace")
    assert (job["last_fire_at"], job["next_run_at"]) == (iso(minute(240)), iso(minute(300)))
    await h.finished(catchup["id"])
    await advance_to(clock, minute(300))
    fired = {r["job"] for r in await runs_of(h, "triggered_by=cron") if r["scheduled_for"] == iso(minute(300))}
    assert fired == {"grace", "tight", "skip", "new"}
    for run in await runs_of(h, "status=PENDING,PROCESSING"):
        await h.finished(run["id"])
    await h.client.close()

    # Down again, but nothing was missed this time: no catch-up.
    clock.set(minute(330))
    h = await start({**jobs, "new": hourly}, clock=clock)
    await clock.sleeping()
    assert len(await runs_of(h, "triggered_by=catchup")) == 1


# -- jobd check and the scheduler agree ---------------------------------------------------------------

CHECK_JOBS = {"daily": "30 2 * * *", "hourly": "0 * * * *", "quarter": "*/15 * * * *"}


def write_check_config(tmp_path: Path) -> Path:
    path = tmp_path / "check.toml"
    path.write_text(
        "".join(
            f'[jobs.{name}]\ncommand = ["true"]\nschedule = "{expr}"\ntimezone = "Europe/Skopje"\n'
            for name, expr in CHECK_JOBS.items()
        )
    )
    return path


async def jobd_check(*args: str) -> dict[str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobd",
        "check",
        *args,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return {name: job["next"] for name, job in json.loads(out)["jobs"].items()}


async def scheduler_fires(config: Config, start: datetime, count: int) -> dict[str, list[datetime]]:
    """The first `count` fires of each job, as the scheduler issues them from `start`."""
    clock = FakeClock(start)
    fired: dict[str, list[datetime]] = {name: [] for name in config.jobs}
    enough = asyncio.Event()

    async def fire(request: FireRequest) -> None:
        fired[request.job].append(request.scheduled_for)
        if all(len(times) >= count for times in fired.values()):
            enough.set()

    scheduler = Scheduler(config.jobs, fire, clock=clock, max_sleep_s=86400 * 366)
    task = asyncio.create_task(scheduler.run())
    try:
        sleeper = await clock.sleeping()
        while not enough.is_set():
            clock.set(sleeper.until)
            sleeper = await clock.sleeping(since=sleeper.number)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {name: times[:count] for name, times in fired.items()}


@pytest.mark.parametrize("start_at", ["2026-03-29T00:50:00Z", "2026-10-24T23:50:00Z"], ids=["spring", "fall"])
async def test_jobd_check_shows_the_times_the_scheduler_fires(tmp_path: Path, start_at: str, backend: str) -> None:
    sqlite_only(backend, "no store: jobd check and the Scheduler alone")
    # Ten minutes before 02:00 local on the night of each change in Skopje.
    path = write_check_config(tmp_path)
    count = 8
    shown = await jobd_check("-c", str(path), "--from", start_at, "--count", str(count))
    start = datetime.fromisoformat(start_at.replace("Z", "+00:00"))
    fired = await scheduler_fires(load_config(path, environ={}), start, count)
    zone = ZoneInfo("Europe/Skopje")
    assert shown == {name: [t.astimezone(zone).isoformat() for t in times] for name, times in fired.items()}
    day = "2026-03-29" if start.month == 3 else "2026-10-25"
    in_hour_two = {name: [t for t in times if t.startswith(f"{day}T02:")] for name, times in shown.items()}
    if start.month == 3:
        # 02:00 CET jumps to 03:00 CEST: nothing at 02:xx; the daily 02:30 fires at the end of the gap.
        assert in_hour_two == {"daily": [], "hourly": [], "quarter": []}
        assert shown["daily"][:2] == [f"{day}T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        assert shown["hourly"][0] == shown["quarter"][0] == f"{day}T03:00:00+02:00"
    else:
        # 03:00 CEST falls back to 02:00 CET: wildcard jobs fire in both copies of 02:xx, the daily one once.
        assert in_hour_two["daily"] == [f"{day}T02:30:00+02:00"]
        assert in_hour_two["hourly"] == [f"{day}T02:00:00+02:00", f"{day}T02:00:00+01:00"]
        assert in_hour_two["quarter"] == [f"{day}T02:{m:02d}:00+{h:02d}:00" for h in (2, 1) for m in (0, 15, 30, 45)]


# -- scale ------------------------------------------------------------------------------------------


async def test_ten_thousand_scheduled_jobs_in_one_daemon(start: StartDaemon) -> None:
    schedules = ["H * * * *", "*/15 * * * *", "30 2 * * *", "H H * * 1-5"]
    zones = ["UTC", "Europe/Skopje", "America/New_York"]
    jobs = {
        f"job{i:05d}": {"command": ["true"], "schedule": schedules[i % 4], "timezone": zones[i % 3]}
        for i in range(10_000)
    }
    clock = FakeClock(T0)  # time stands still: nothing fires
    h = await start(jobs, clock=clock)
    listed = (await h.get_json("/api/v1/jobs"))["jobs"]
    assert len(listed) == 10_000
    assert all(j["next_run_at"] is not None and j["next_run_at"] > iso(T0) for j in listed)
    sample = listed[1234]
    spec = CronSpec.parse(sample["schedule"], sample["name"])
    assert sample["next_run_at"] == iso(spec.next_after(T0, ZoneInfo(sample["timezone"])))
    # H spreads the hourly jobs over the hour, stably by name.
    hashed = [j["next_run_at"] for j in listed if j["schedule"] == "H * * * *"]
    assert len({when[14:16] for when in hashed}) == 60


# -- a real daemon process --------------------------------------------------------------------------


async def test_a_real_daemon_fires_a_seconds_schedule_on_the_second(tmp_path: Path, store_toml: str) -> None:
    path = tmp_path / "jobd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n{store_toml}'
        "[workers]\nshutdown_grace_s = 2\nkill_grace_s = 0.5\n"
        '[jobs.tick]\ncommand = ["true"]\nschedule = "* * * * * *"\noverlap = "allow"\nmax_concurrency = 4\n'
    )
    daemon = DaemonProcess(path)
    try:
        url = await daemon.start()
        async with aiohttp.ClientSession() as http:

            async def cron_runs() -> list[dict[str, Any]]:
                async with http.get(f"{url}/api/v1/runs?triggered_by=cron&limit=100") as response:
                    assert response.status == 200
                    runs = (await response.json())["runs"]
                return runs if len(runs) >= 2 else []

            runs = await wait_for(cron_runs, timeout=20, interval=0.05)
            async with http.get(f"{url}/api/v1/jobs/tick") as response:
                job = (await response.json())["job"]
        assert all(r["triggered_by"] == "cron" and r["job"] == "tick" for r in runs)
        scheduled = sorted(r["scheduled_for"] for r in runs)
        assert all(when.endswith(".000Z") for when in scheduled), scheduled
        assert len(set(scheduled)) == len(scheduled)
        assert all(r["created_at"] >= r["scheduled_for"] for r in runs)
        assert job["next_run_at"].endswith(".000Z") and job["last_fire_at"].endswith(".000Z")
        assert await daemon.stop() == 0
    finally:
        await daemon.cleanup()
