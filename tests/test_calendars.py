"""Calendars and time windows: `[calendars.NAME]` (dates, ranges, weekdays, an iCalendar file) and a
job's `exclude`, `only`, `active_from` and `active_until`; the config errors; the scheduler (with a
FakeClock) and backfill on both backends; catch-up; `jobd check --from`; reloading an edited file.

Most fires here are at 00:30 in Europe/Berlin, which is 23:30 UTC the day before: a calendar's
days are the job's days, so the Berlin date decides."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import BACKENDS, Harness, wait_for

from jobd.app import Daemon
from jobd.calendars import IcsDays
from jobd.catchup import range_fires
from jobd.config import Config, ConfigError, load_config, parse_config
from jobd.cronspec import CronSpec
from jobd.models import iso_ms
from jobd.scheduler import FireRequest, Scheduler
from jobd.web import create_app
from tests.fakeclock import FakeClock

ROOT = Path(__file__).resolve().parent.parent
BERLIN = ZoneInfo("Europe/Berlin")
NOOP = {"handler": "sample_jobs:noop"}
NIGHTLY = {**NOOP, "schedule": "30 0 * * *", "timezone": "Europe/Berlin"}
HOLIDAYS = {"holidays": {"dates": ["2026-12-25"]}}

# An all-day event (24-26 December: DTEND is the day after the last) and a weekly timed event from
# Monday 23:00 to Tuesday 00:30, Berlin time, which covers both days.
ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//jobd tests//EN
BEGIN:VEVENT
UID:xmas@jobd.test
DTSTAMP:20260101T000000Z
DTSTART;VALUE=DATE:{start}
DTEND;VALUE=DATE:{end}
SUMMARY:Christmas
END:VEVENT
BEGIN:VEVENT
UID:maintenance@jobd.test
DTSTAMP:20260101T000000Z
DTSTART;TZID=Europe/Berlin:20260105T230000
DTEND;TZID=Europe/Berlin:20260106T003000
RRULE:FREQ=WEEKLY;BYDAY=MO
SUMMARY:Maintenance
END:VEVENT
END:VCALENDAR
"""


def ics(start: str = "20261224", end: str = "20261227") -> str:
    return ICS.format(start=start, end=end).replace("\n", "\r\n")


def iso(when: datetime) -> str:
    return iso_ms(round(when.timestamp() * 1000)) or ""


def parse(raw: dict[str, Any], base_dir: Path = ROOT) -> Config:
    return parse_config(raw, environ={}, base_dir=base_dir)


# -- calendars and the config -------------------------------------------------------------------------


def test_an_ics_file_counts_all_day_events_and_rrule_occurrences_as_days() -> None:
    days = IcsDays(ics().encode())
    assert [day in days for day in (date(2026, 12, 23), date(2026, 12, 24), date(2026, 12, 26))] == [False, True, True]
    assert date(2026, 12, 27) not in days  # DTEND's own day is not part of an all-day event
    # The timed event: Monday and the Tuesday it runs into, every week, in later years too.
    assert [date(2026, 1, d) in days for d in (4, 5, 6, 7)] == [False, True, True, False]
    assert date(2027, 3, 1) in days and date(2027, 3, 2) in days and date(2027, 3, 3) not in days
    assert date(2025, 12, 29) not in days  # a Monday before the first occurrence


def test_a_calendar_is_the_union_of_its_dates_ranges_weekdays_and_ics_file(tmp_path: Path) -> None:
    (tmp_path / "off.ics").write_text(ics())
    config = parse(
        {
            "calendars": {
                "mixed": {
                    "dates": ["2026-05-01", date(2026, 5, 8)],
                    "ranges": [{"from": "2026-08-03", "to": "2026-08-07"}],
                    "weekdays": ["sun", 6],
                    "ics": "off.ics",
                }
            },
            "jobs": {"j": {**NIGHTLY, "exclude": ["mixed"]}},
        },
        base_dir=tmp_path,
    )
    window = config.jobs["j"].window
    assert window is not None
    [mixed] = window.exclude
    inside = [
        date(2026, 5, 1),
        date(2026, 5, 8),
        date(2026, 8, 3),
        date(2026, 8, 7),
        date(2026, 5, 2),
        date(2026, 5, 3),
    ]
    assert all(day in mixed for day in inside)
    assert date(2026, 12, 25) in mixed  # from the ics file
    assert not any(day in mixed for day in (date(2026, 8, 12), date(2026, 8, 13), date(2026, 5, 6)))  # Wed, Thu


def test_a_fire_is_judged_by_its_date_in_the_jobs_zone() -> None:
    config = parse({"calendars": HOLIDAYS, "jobs": {"j": {**NIGHTLY, "exclude": ["holidays"]}}})
    window = config.jobs["j"].window
    assert window is not None
    # 00:30 on the 25th in Berlin is 23:30 on the 24th in UTC: excluded.
    assert window.reason(datetime(2026, 12, 24, 23, 30, tzinfo=UTC)) == "holidays"
    # 00:30 on the 26th in Berlin is still the 25th in UTC: it runs.
    assert window.reason(datetime(2026, 12, 25, 23, 30, tzinfo=UTC)) is None


def test_only_exclude_and_the_active_period_together() -> None:
    config = parse(
        {
            "calendars": {**HOLIDAYS, "weekdays": {"weekdays": [1, 2, 3, 4, 5]}},
            "jobs": {
                "j": {
                    **NIGHTLY,
                    "only": ["weekdays"],
                    "exclude": ["holidays"],
                    "active_from": "2026-12-01",
                    "active_until": "2027-01-15T00:30:00",
                }
            },
        }
    )
    window = config.jobs["j"].window
    assert window is not None
    assert window.active_from == datetime(2026, 11, 30, 23, tzinfo=UTC)  # midnight in Berlin
    assert window.active_until == datetime(2027, 1, 14, 23, 30, tzinfo=UTC)  # no offset: Berlin time

    def at(day: date) -> datetime:
        return datetime(day.year, day.month, day.day, 0, 30, tzinfo=BERLIN).astimezone(UTC)

    assert window.reason(at(date(2026, 11, 30))) == "before active_from"
    assert window.reason(at(date(2026, 12, 1))) is None
    assert window.reason(at(date(2026, 12, 5))) == "not in weekdays"  # a Saturday
    assert window.reason(at(date(2026, 12, 25))) == "holidays"
    assert window.reason(at(date(2027, 1, 15))) is None  # active_until is included
    assert window.reason(at(date(2027, 1, 15)) + timedelta(seconds=1)) == "after active_until"
    spec = CronSpec.parse("30 0 * * *", "j")
    found = range_fires(spec, BERLIN, at(date(2026, 12, 24)), at(date(2026, 12, 29)), 10, window)
    assert [t.astimezone(BERLIN).day for t in found.times] == [24, 28]
    assert [(t.astimezone(BERLIN).day, why) for t, why in found.excluded] == [
        (25, "holidays"),
        (26, "not in weekdays"),
        (27, "not in weekdays"),
    ]


def test_a_whole_day_active_until_includes_that_day() -> None:
    config = parse({"jobs": {"j": {**NIGHTLY, "active_until": date(2026, 12, 31)}}})
    window = config.jobs["j"].window
    assert window is not None and window.active_until == datetime(2026, 12, 31, 22, 59, 59, 999000, tzinfo=UTC)


ERRORS = [
    ({"calendars": {"h": {"dates": ["2026-13-01"]}}}, "calendars.h.dates[0]: '2026-13-01' is not a date"),
    ({"calendars": {"h": {"dates": [20261225]}}}, "calendars.h.dates[0]: must be a date"),
    ({"calendars": {"h": {"weekdays": ["someday"]}}}, "calendars.h.weekdays[0]: 'someday' is not a weekday"),
    ({"calendars": {"h": {"weekdays": [8]}}}, "calendars.h.weekdays[0]: 8 is not a weekday"),
    ({"calendars": {"h": {"ranges": [{"from": "2026-12-24"}]}}}, "calendars.h.ranges[0].to: required"),
    (
        {"calendars": {"h": {"ranges": [{"from": "2026-12-24", "to": "2026-12-01"}]}}},
        "calendars.h.ranges[0].to: 2026-12-01 is before from",
    ),
    ({"calendars": {"h": {"ranges": [{"from": "2026-12-24", "to": "x", "z": 1}]}}}, "calendars.h.ranges[0].to: 'x'"),
    ({"calendars": {"h": {}}}, "calendars.h: give at least one of dates, ranges, weekdays or ics"),
    ({"calendars": {"h": {"dates": [], "typo": 1}}}, "calendars.h.typo: unknown key"),
    ({"calendars": {"h": {"ics": "missing.ics"}}}, "calendars.h.ics: cannot read"),
    ({"calendars": {"h": {"ics": "bad.ics"}}}, "calendars.h.ics: "),
    ({"jobs": {"j": {**NIGHTLY, "exclude": ["nope"]}}}, "jobs.j.exclude: no calendar named 'nope'"),
    ({"calendars": HOLIDAYS, "jobs": {"j": {**NIGHTLY, "only": ["nope"]}}}, "jobs.j.only: no calendar named 'nope'"),
    ({"jobs": {"j": {**NIGHTLY, "active_from": "2026-12-1x"}}}, "jobs.j.active_from: '2026-12-1x' is not an ISO"),
    ({"jobs": {"j": {**NIGHTLY, "active_until": 3}}}, "jobs.j.active_until: must be an ISO date or date-time"),
    (
        {"jobs": {"j": {**NIGHTLY, "active_from": "2027-01-01", "active_until": "2026-01-01"}}},
        "jobs.j.active_until: before active_from",
    ),
    ({"calendars": HOLIDAYS, "jobs": {"j": {**NOOP, "exclude": ["holidays"]}}}, "jobs.j.exclude: the job has no"),
]


@pytest.mark.parametrize(("raw", "message"), ERRORS)
def test_errors_name_the_key_on_one_line(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    (tmp_path / "bad.ics").write_text("BEGIN:VCALENDAR\r\nthis is not iCalendar\r\n")
    with pytest.raises(ConfigError) as caught:
        parse(raw, base_dir=tmp_path)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


# -- the scheduler --------------------------------------------------------------------------------------


async def test_next_run_at_passes_over_excluded_days_and_the_schedule_ends_after_active_until() -> None:
    config = parse(
        {
            "calendars": {"weekend": {"weekdays": ["sat", "sun"]}},
            "jobs": {
                "workdays": {**NIGHTLY, "exclude": ["weekend"]},
                "ended": {**NIGHTLY, "active_until": "2026-03-01"},
                "later": {**NIGHTLY, "active_from": "2026-04-01T12:00:00+02:00"},
            },
        }
    )
    fired: list[FireRequest] = []

    async def fire(request: FireRequest) -> None:
        fired.append(request)

    friday_evening = datetime(2026, 3, 6, 20, tzinfo=UTC)
    scheduler = Scheduler(config.jobs, fire, clock=FakeClock(friday_evening))
    # Saturday's and Sunday's 00:30 are excluded: the next fire that runs is Monday's.
    assert scheduler.next_run_at("workdays") == datetime(2026, 3, 8, 23, 30, tzinfo=UTC)
    assert scheduler.next_run_at("ended") is None
    assert scheduler.next_run_at("later") == datetime(2026, 4, 1, 22, 30, tzinfo=UTC)


async def test_catch_up_leaves_excluded_missed_fires_out() -> None:
    hourly = {**NOOP, "schedule": "0 * * * *", "timezone": "Europe/Berlin", "misfire_grace_s": 4 * 86400}
    config = parse(
        {
            "calendars": {"weekend": {"weekdays": ["sat", "sun"]}},
            "jobs": {
                "all": {**hourly, "misfire": "run_all", "exclude": ["weekend"]},
                "once": {**hourly, "misfire": "run_once", "only": ["weekend"]},
            },
        }
    )
    jobs = config.jobs

    async def fire(request: FireRequest) -> None:
        raise AssertionError("not run here")

    last = datetime(2026, 3, 6, 21, tzinfo=UTC)  # Friday 22:00 in Berlin
    now = datetime(2026, 3, 9, 0, 30, tzinfo=UTC)  # Monday 01:30 in Berlin
    scheduler = Scheduler(jobs, fire, clock=FakeClock(now), last_fires={"all": last, "once": last})
    by_job: dict[str, list[datetime]] = {}
    for request in scheduler.catch_up():
        assert request.catchup and request.excluded_by is None
        by_job.setdefault(request.job, []).append(request.scheduled_for)
    # Friday 23:00, then the weekend passed over, then Monday 00:00 and 01:00 (Berlin).
    assert by_job["all"] == [
        datetime(2026, 3, 6, 22, tzinfo=UTC),
        datetime(2026, 3, 8, 23, tzinfo=UTC),
        datetime(2026, 3, 9, 0, tzinfo=UTC),
    ]
    # Only weekends: the newest missed fire that would have run is Sunday 23:00 in Berlin.
    assert by_job["once"] == [datetime(2026, 3, 8, 22, tzinfo=UTC)]


StartDaemon = Callable[..., Awaitable[Harness]]


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Config]) -> StartDaemon:
    async def start(
        jobs: dict[str, Any] | None = None, *, clock: FakeClock, config: Config | None = None, **sections: Any
    ) -> Harness:
        daemon = Daemon(config or make_config(jobs, **sections), environ={"PATH": "/usr/bin:/bin"}, clock=clock)
        return Harness(await aiohttp_client(create_app(daemon)), daemon)

    return start


async def advance_to(clock: FakeClock, when: datetime) -> None:
    sleeper = await clock.sleeping()
    clock.set(when)
    if sleeper.until <= when:
        await clock.sleeping(since=sleeper.number)


async def job_of(h: Harness, name: str) -> dict[str, Any]:
    return (await h.get_json(f"/api/v1/jobs/{name}"))["job"]


async def cron_runs(h: Harness, job: str) -> list[str]:
    runs = (await h.get_json(f"/api/v1/runs?job={job}&limit=100"))["runs"]
    return sorted(run["scheduled_for"] for run in runs)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_an_excluded_fire_in_berlin_is_skipped_with_reason_excluded(start: StartDaemon, backend: str) -> None:
    clock = FakeClock(datetime(2026, 12, 24, 12, tzinfo=UTC))
    h = await start({"nightly": {**NIGHTLY, "exclude": ["holidays"]}}, clock=clock, calendars=HOLIDAYS)
    christmas = datetime(2026, 12, 24, 23, 30, tzinfo=UTC)  # 00:30 on the 25th in Berlin
    boxing_day = christmas + timedelta(days=1)
    job = await job_of(h, "nightly")
    assert (job["next_run_at"], job["next_run_at_local"]) == (iso(boxing_day), "2026-12-26T00:30:00+01:00")
    assert (job["skipped_fires"], job["last_skip_reason"]) == (0, None)

    first_event = h.daemon.bus.last_id
    await advance_to(clock, christmas)
    job = await job_of(h, "nightly")
    assert (job["skipped_fires"], job["last_skipped_at"], job["last_skip_reason"]) == (1, iso(christmas), "excluded")
    assert (job["last_fire_at"], job["next_run_at"]) == (iso(christmas), iso(boxing_day))
    assert await cron_runs(h, "nightly") == []

    def skipped() -> list[Any]:
        return [e.data for e in h.daemon.bus.since(first_event) or [] if e.type == "fire_skipped"]

    [event] = await wait_for(skipped)
    assert event["scheduled_for"] == iso(christmas)
    assert (event["skip_reason"], event["excluded_by"], event["reason"]) == (
        "excluded",
        "holidays",
        "excluded (holidays)",
    )

    if backend == "postgresql":
        # Another node deciding the same (its config holds the same calendars) finds the fire recorded.
        ms = round(christmas.timestamp() * 1000)
        await h.daemon.backend.exclude_fire("nightly", ms, now=ms + 5, excluded_by="holidays")
        assert (await job_of(h, "nightly"))["skipped_fires"] == 1

    await advance_to(clock, boxing_day)
    assert await cron_runs(h, "nightly") == [iso(boxing_day)]
    stored = (await h.daemon.store.job_states())["nightly"]
    assert (stored.skipped_fires, stored.last_skip_reason) == (1, "excluded")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_reload_rereads_an_edited_ics_file(start: StartDaemon, tmp_path: Path, store_toml: str) -> None:
    (tmp_path / "off.ics").write_text(ics("20261225", "20261226"))
    path = tmp_path / "jobd.toml"
    path.write_text(
        store_toml
        + '[calendars.off]\nics = "off.ics"\n'
        + '[jobs.nightly]\nhandler = "sample_jobs:noop"\nschedule = "30 0 * * *"\n'
        + 'timezone = "Europe/Berlin"\nexclude = ["off"]\n'
    )
    clock = FakeClock(datetime(2026, 12, 24, 12, tzinfo=UTC))
    h = await start(config=load_config(path, environ={}), clock=clock)
    christmas = datetime(2026, 12, 24, 23, 30, tzinfo=UTC)
    assert (await job_of(h, "nightly"))["next_run_at"] == iso(christmas + timedelta(days=1))
    (tmp_path / "off.ics").write_text(ics("20261226", "20261227"))  # the day off moves to the 26th
    assert await h.daemon.reload()
    assert (await job_of(h, "nightly"))["next_run_at"] == iso(christmas)
    await advance_to(clock, christmas)
    assert await cron_runs(h, "nightly") == [iso(christmas)]
    await advance_to(clock, christmas + timedelta(days=1))
    job = await job_of(h, "nightly")
    assert (job["skipped_fires"], job["last_skip_reason"]) == (1, "excluded")
    assert job["next_run_at"] == iso(christmas + timedelta(days=2))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_backfill_leaves_excluded_fires_out_and_lists_them(start_daemon: StartDaemon) -> None:
    h = await start_daemon(
        {"noon": {**NOOP, "schedule": "0 12 * * *", "timezone": "Europe/Berlin", "exclude": ["weekend"]}},
        calendars={"weekend": {"weekdays": ["sat", "sun"]}},
    )
    body = {"from": "2026-03-02T00:00:00+01:00", "to": "2026-03-09T00:00:00+01:00"}
    response = await h.client.post("/api/v1/jobs/noon/backfill", json={**body, "dry_run": True, "max_runs": 5})
    preview = await response.json()
    assert response.status == 200, preview
    assert [local[:10] for local in preview["fire_times_local"]] == [f"2026-03-0{d}" for d in (2, 3, 4, 5, 6)]
    assert preview["excluded"] == [
        {"at": "2026-03-07T11:00:00.000Z", "at_local": "2026-03-07T12:00:00+01:00", "excluded_by": "weekend"},
        {"at": "2026-03-08T11:00:00.000Z", "at_local": "2026-03-08T12:00:00+01:00", "excluded_by": "weekend"},
    ]
    assert preview["excluded_truncated"] is False
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "jobd", "backfill", "noon", "--from", body["from"], "--to", body["to"], "--dry-run"),
        *("--url", str(h.client.make_url("")).rstrip("/")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert out.decode().splitlines() == [
        "noon: 5 fire time(s) in Europe/Berlin, 2 excluded",
        *(f"  2026-03-0{day}T12:00:00+01:00" for day in (2, 3, 4, 5, 6)),
        "  2026-03-07T12:00:00+01:00  excluded (weekend)",
        "  2026-03-08T12:00:00+01:00  excluded (weekend)",
    ], err.decode()
    response = await h.client.post("/api/v1/jobs/noon/backfill", json=body)
    made = await response.json()
    assert response.status == 202, made
    assert [run["scheduled_for"] for run in made["runs"]] == preview["fire_times"]


# -- jobd check --from -------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobd", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_check_from_marks_excluded_fires(tmp_path: Path) -> None:
    (tmp_path / "off.ics").write_text(ics())
    config = tmp_path / "jobd.toml"
    config.write_text(
        '[calendars.holidays]\nics = "off.ics"\ndates = ["2027-01-01"]\n'
        '[jobs.nightly]\ncommand = ["true"]\nschedule = "30 0 * * *"\ntimezone = "Europe/Berlin"\n'
        'exclude = ["holidays"]\n'
    )
    args = ("check", "-c", str(config), "--from", "2026-12-23T12:00:00Z", "--count", "5")
    human = run_cli(*args)
    assert human.returncode == 0, human.stderr
    lines = [line.strip() for line in human.stdout.splitlines() if "T00:30:00" in line]
    assert lines == [
        "2026-12-24T00:30:00+01:00  excluded (holidays)",
        "2026-12-25T00:30:00+01:00  excluded (holidays)",
        "2026-12-26T00:30:00+01:00  excluded (holidays)",
        "2026-12-27T00:30:00+01:00",
        "2026-12-28T00:30:00+01:00  excluded (holidays)",  # a Monday: the weekly maintenance event
    ]
    data = json.loads(run_cli(*args, "--json").stdout)["jobs"]["nightly"]
    assert data["next"][3] == "2026-12-27T00:30:00+01:00"
    assert [item["at"][:10] for item in data["excluded"]] == ["2026-12-24", "2026-12-25", "2026-12-26", "2026-12-28"]
    assert {item["excluded_by"] for item in data["excluded"]} == {"holidays"}
    (tmp_path / "off.ics").write_text("not a calendar")
    broken = run_cli(*args)
    assert broken.returncode == 2 and broken.stderr.startswith("jobd: invalid config: calendars.holidays.ics: ")
    assert broken.stderr.count("\n") == 1, broken.stderr
