from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobd.config import JobConfig
from jobd.cronspec import CronSpec
from jobd.scheduler import FireRequest, Scheduler
from tests.conftest import wait_for
from tests.fakeclock import DEADLINE_S, FakeClock

UTC = UTC
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LONG = 1e9  # max_sleep_s for tests that step through virtual time without wall-clock jumps


def at(minutes: float = 0, *, hours: float = 0, seconds: float = 0, base: datetime = T0) -> datetime:
    return base + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def job(name: str, schedule: str | None, **options: Any) -> JobConfig:
    return JobConfig(name=name, command=("true",), schedule=schedule, **options)


def jobs(*configs: JobConfig) -> dict[str, JobConfig]:
    return {config.name: config for config in configs}


class Recorder:
    """The fire callback: remembers each request and the clock reading when it came."""

    def __init__(self, clock: FakeClock, fail_first: int = 0) -> None:
        self.clock = clock
        self.requests: list[FireRequest] = []
        self.moments: list[datetime] = []
        self.fail_first = fail_first
        self.on_fire: Any = None
        self._changed = asyncio.Event()

    async def __call__(self, request: FireRequest) -> None:
        self.requests.append(request)
        self.moments.append(self.clock.now())
        self._changed.set()
        if self.on_fire is not None:
            self.on_fire(request)
        if len(self.requests) <= self.fail_first:
            raise RuntimeError("store is down")

    def of(self, name: str) -> list[datetime]:
        return [request.scheduled_for for request in self.requests if request.job == name]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while len(self.requests) < count:
                self._changed.clear()
                await self._changed.wait()


class LogRecorder:
    """Takes structlog-style calls: log.warning("event", key=value)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.entries.append((level, event, fields))

        return record

    def events(self, level: str | None = None) -> list[str]:
        return [event for lvl, event, _ in self.entries if level in (None, lvl)]


def make(
    configs: Mapping[str, JobConfig], start: datetime = T0, **options: Any
) -> tuple[Scheduler, FakeClock, Recorder, LogRecorder]:
    clock = FakeClock(start)
    recorder = Recorder(clock, fail_first=options.pop("fail_first", 0))
    log = LogRecorder()
    options.setdefault("max_sleep_s", LONG)
    scheduler = Scheduler(configs, recorder, clock=clock, log=log, **options)
    return scheduler, clock, recorder, log


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(scheduler.run())
    try:
        yield task
        assert not task.done(), "the scheduler loop stopped"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def expected(expr: str, name: str, start: datetime, end: datetime, zone: str = "UTC") -> list[datetime]:
    spec, tz, out = CronSpec.parse(expr, name), ZoneInfo(zone), []
    fire = spec.next_after(start, tz)
    while fire <= end:
        out.append(fire.astimezone(UTC))
        fire = spec.next_after(fire, tz)
    return out


async def test_fires_in_order_across_jobs_at_the_exact_times() -> None:
    config = jobs(job("a", "*/10 * * * *"), job("b", "*/15 * * * *"), job("c", "0 * * * *"))
    scheduler, clock, fired, _ = make(config, start=at(seconds=1))
    async with running(scheduler):
        await clock.run_until(at(hours=2))
    for name in config:
        assert fired.of(name) == expected(config[name].schedule or "", name, at(seconds=1), at(hours=2))
    nominal = [request.scheduled_for for request in fired.requests]
    assert nominal == sorted(nominal)
    assert fired.moments == nominal  # no jitter: each fire happens at its nominal time
    assert all(not request.catchup for request in fired.requests)
    assert len(fired.requests) == 12 + 8 + 2
    assert scheduler.last_fire("a") == at(hours=2)
    assert scheduler.next_run_at("c") == at(hours=3)


async def test_unscheduled_jobs_never_fire() -> None:
    scheduler, clock, fired, _ = make(jobs(job("manual", None), job("tick", "* * * * *")))
    assert scheduler.next_run_at("manual") is None
    assert scheduler.next_run_at("unknown") is None
    async with running(scheduler):
        await clock.run_until(at(5))
    assert {request.job for request in fired.requests} == {"tick"}


async def test_pause_stops_fires_and_resume_restores_them() -> None:
    scheduler, clock, fired, _ = make(jobs(job("a", "* * * * *"), job("b", "* * * * *")))
    async with running(scheduler):
        await clock.run_until(at(2))
        scheduler.pause("a")
        assert scheduler.next_run_at("a") is None
        assert scheduler.next_run_at("b") == at(3)
        await clock.run_until(at(5, seconds=30))
        scheduler.resume("a")
        assert scheduler.next_run_at("a") == at(6)
        await clock.run_until(at(7))
    assert fired.of("a") == [at(1), at(2), at(6), at(7)]
    assert fired.of("b") == [at(m) for m in range(1, 8)]


async def test_paused_at_start_and_pause_from_inside_the_fire_callback() -> None:
    scheduler, clock, fired, _ = make(
        jobs(job("a", "* * * * *"), job("b", "* * * * *"), job("c", "* * * * *")), paused=["a"]
    )
    fired.on_fire = lambda request: scheduler.pause("b") if request.job == "b" else None
    assert scheduler.next_run_at("a") is None
    async with running(scheduler):
        await clock.run_until(at(3))
    assert fired.of("a") == []
    assert fired.of("b") == [at(1)]
    assert fired.of("c") == [at(1), at(2), at(3)]
    assert scheduler.next_run_at("b") is None


@pytest.mark.parametrize("how", ["reload", "resume"])
async def test_pause_resume_and_reload_wake_the_sleeping_loop(how: str) -> None:
    configs = jobs(job("hourly", "0 * * * *"), job("often", "* * * * *"))
    scheduler, clock, fired, _ = make(
        {"hourly": configs["hourly"]} if how == "reload" else configs,
        paused=["often"] if how == "resume" else [],
    )
    async with running(scheduler):
        first = await clock.sleeping()
        assert first.until == at(60)  # asleep until the hourly fire
        if how == "reload":
            scheduler.reload(configs)
        else:
            scheduler.resume("often")
        second = await clock.sleeping(since=first.number)
        assert second.until == at(1)
        await clock.run_until(at(1))
    assert fired.of("often") == [at(1)]


async def test_reload_adds_removes_and_changes_jobs() -> None:
    scheduler, clock, fired, _ = make(
        jobs(job("keep", "0 * * * *"), job("gone", "30 * * * *"), job("moved", "0 * * * *"))
    )
    async with running(scheduler):
        await clock.run_until(at(hours=1, minutes=40))
        scheduler.reload(
            jobs(job("keep", "0 * * * *", description="edited"), job("new", "*/20 * * * *"), job("moved", "15 * * * *"))
        )
        assert scheduler.next_run_at("gone") is None
        assert scheduler.next_run_at("keep") == at(hours=2)
        assert scheduler.next_run_at("new") == at(hours=2)
        assert scheduler.next_run_at("moved") == at(hours=2, minutes=15)
        await clock.run_until(at(hours=3))
    assert fired.of("gone") == [at(30), at(90)]
    assert fired.of("keep") == [at(hours=1), at(hours=2), at(hours=3)]
    assert fired.of("moved") == [at(hours=1), at(hours=2, minutes=15)]
    assert fired.of("new") == [at(hours=2), at(hours=2, minutes=20), at(hours=2, minutes=40), at(hours=3)]


async def test_reload_keeps_paused_state_and_unchanged_timing() -> None:
    seed_jitter = random.Random(5).random() * 40
    scheduler, clock, fired, _ = make(
        jobs(job("jittery", "0 * * * *", jitter_s=40.0), job("held", "* * * * *")),
        paused=["held"],
        rng=random.Random(5),
    )
    async with running(scheduler):
        scheduler.reload(jobs(job("jittery", "0 * * * *", jitter_s=40.0, retries=2), job("held", "*/2 * * * *")))
        assert scheduler.next_run_at("held") is None
        await clock.run_until(at(61))
    assert fired.of("held") == []
    assert fired.of("jittery") == [at(60)]
    # The unchanged job kept the fire (and jitter) drawn before the reload.
    assert fired.moments == [at(60, seconds=seed_jitter)]


@pytest.mark.parametrize(
    ("schedule", "options", "last", "now", "catchup"),
    [
        pytest.param("0 * * * *", {}, at(hours=10), at(hours=12, minutes=30), [at(hours=12)], id="within-grace"),
        pytest.param(
            "0 * * * *", {"misfire_grace_s": 600}, at(hours=10), at(hours=12, minutes=30), [], id="outside-grace"
        ),
        pytest.param(
            "0 * * * *",
            {"misfire_grace_s": 1800},
            at(hours=10),
            at(hours=12, minutes=30),
            [at(hours=12)],
            id="grace-boundary-inclusive",
        ),
        pytest.param("0 * * * *", {"misfire": "skip"}, at(hours=10), at(hours=12, minutes=30), [], id="skip"),
        pytest.param(
            "* * * * *",
            {"misfire_grace_s": 86400},
            at(hours=-24),
            at(hours=12, seconds=5),
            [at(hours=12)],
            id="many-missed-only-one",
        ),
        pytest.param("0 * * * *", {}, at(hours=12), at(hours=12, minutes=30), [], id="nothing-missed"),
        pytest.param("0 * * * *", {}, at(hours=11), at(hours=12), [at(hours=12)], id="due-exactly-now"),
        pytest.param("0 * * * *", {}, None, at(hours=12, minutes=30), [], id="never-ran"),
        pytest.param(
            "30 2 * * *",
            {"timezone": "Europe/Skopje"},
            datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
            datetime(2026, 3, 29, 1, 20, tzinfo=UTC),
            [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)],
            id="dst-gap-fire",
        ),
    ],
)
def test_catch_up(
    schedule: str, options: dict[str, Any], last: datetime | None, now: datetime, catchup: list[datetime]
) -> None:
    last_fires = {"j": last} if last is not None else {}
    scheduler, _, _, _ = make(jobs(job("j", schedule, **options)), start=now, last_fires=last_fires)
    assert scheduler.catch_up() == [FireRequest("j", when, catchup=True) for when in catchup]
    next_fire = scheduler.next_run_at("j")
    assert next_fire is not None and next_fire > now


def test_no_catch_up_for_paused_or_unscheduled_jobs() -> None:
    last = {"p": at(hours=10), "u": at(hours=10)}
    scheduler, _, _, _ = make(
        jobs(job("p", "0 * * * *"), job("u", None)), start=at(hours=12, minutes=30), paused=["p"], last_fires=last
    )
    assert scheduler.catch_up() == []


async def test_run_issues_the_catch_up_first_and_only_once() -> None:
    start = at(hours=12, minutes=30)
    scheduler, clock, fired, _ = make(
        jobs(job("j", "0 * * * *"), job("k", "*/20 * * * *")),
        start=start,
        last_fires={"j": at(hours=9), "k": at(hours=12, minutes=20)},
    )
    async with running(scheduler):
        await fired.wait_for(1)
        await clock.run_until(at(hours=14))
    assert fired.requests[0] == FireRequest("j", at(hours=12), catchup=True)
    assert fired.of("j") == [at(hours=12), at(hours=13), at(hours=14)]
    assert fired.of("k") == expected("*/20 * * * *", "k", start, at(hours=14))
    assert [request.catchup for request in fired.requests].count(True) == 1
    assert scheduler.catch_up() == [FireRequest("j", at(hours=12), catchup=True)]


async def test_jitter_delays_the_fire_but_not_scheduled_for() -> None:
    offsets_by_seed = []
    for _ in range(2):
        scheduler, clock, fired, _ = make(jobs(job("j", "* * * * *", jitter_s=30.0)), rng=random.Random(1234))
        async with running(scheduler):
            await clock.run_until(at(21))
        assert fired.of("j") == [at(m) for m in range(1, 21)]
        offsets = [
            (moment - request.scheduled_for).total_seconds() for moment, request in zip(fired.moments, fired.requests)
        ]
        assert all(0 <= offset < 30 for offset in offsets)
        assert len(set(offsets)) == len(offsets)
        offsets_by_seed.append(offsets)
    assert offsets_by_seed[0] == offsets_by_seed[1]  # the injected rng decides


async def test_a_forward_clock_jump_fires_once_and_does_not_burst() -> None:
    scheduler, clock, fired, log = make(jobs(job("j", "* * * * *")), max_sleep_s=1.0)
    async with running(scheduler):
        sleeper = await clock.sleeping()
        clock.set(at(hours=3, seconds=30))  # the wall clock leaps three hours
        await fired.wait_for(1)
        sleeper = await clock.sleeping(since=sleeper.number)
        assert fired.of("j") == [at(1)]
        assert scheduler.next_run_at("j") == at(hours=3, minutes=1)
        await clock.run_until(at(hours=3, minutes=2))
    assert fired.of("j") == [at(1), at(hours=3, minutes=1), at(hours=3, minutes=2)]
    assert "scheduler.fires_skipped" in log.events("warning")


@pytest.mark.parametrize(("max_sleep_s", "longest"), [(1.0, 1.0), (LONG, 3600.0)])
async def test_sleeps_are_bounded_so_a_clock_jump_is_noticed(max_sleep_s: float, longest: float) -> None:
    scheduler, clock, fired, _ = make(jobs(job("hourly", "0 * * * *")), max_sleep_s=max_sleep_s)
    async with running(scheduler):
        sleeper = await clock.sleeping()
        assert sleeper.until == at(seconds=longest)
        if max_sleep_s == 1.0:
            for _ in range(3):  # an idle loop keeps taking bounded naps
                clock.advance(1.0)
                sleeper = await clock.sleeping(since=sleeper.number)
            clock.set(at(hours=1, seconds=2))  # a jump: noticed at the end of the current nap
            await fired.wait_for(1)
            assert fired.moments == [at(hours=1, seconds=2)]
            assert fired.of("hourly") == [at(hours=1)]
    assert max(clock.sleep_calls) == longest


async def test_a_failing_fire_callback_does_not_kill_the_loop() -> None:
    scheduler, clock, fired, log = make(jobs(job("j", "* * * * *")), fail_first=2)
    async with running(scheduler) as task:
        await clock.run_until(at(4))
        assert not task.done()
    assert fired.of("j") == [at(1), at(2), at(3), at(4)]
    assert scheduler.last_fire("j") == at(4)
    assert log.events("exception") == ["scheduler.fire_failed", "scheduler.fire_failed"]


async def test_fires_due_together_are_issued_together() -> None:
    # A fire waits for its run's commit; fires due at the same instant must not wait for each other.
    gate = asyncio.Event()
    issued: list[str] = []

    async def slow_fire(request: FireRequest) -> None:
        issued.append(request.job)
        await gate.wait()

    clock = FakeClock(T0)
    scheduler = Scheduler(
        jobs(*(job(f"j{i}", "* * * * *") for i in range(3))),
        slow_fire,
        clock=clock,
        log=LogRecorder(),
        max_sleep_s=LONG,
    )
    async with running(scheduler):
        await clock.sleeping()
        clock.set(at(1))
        await wait_for(lambda: len(issued) == 3)  # all three before any has finished
        assert issued == ["j0", "j1", "j2"]
        assert [scheduler.last_fire(f"j{i}") for i in range(3)] == [None] * 3  # none has finished
        gate.set()
        await wait_for(lambda: all(scheduler.last_fire(f"j{i}") == at(1) for i in range(3)))
    assert [scheduler.next_run_at(f"j{i}") for i in range(3)] == [at(2)] * 3


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(datetime(2026, 3, 28, 22, tzinfo=UTC), datetime(2026, 3, 29, 6, tzinfo=UTC), id="spring"),
        pytest.param(datetime(2026, 10, 24, 21, tzinfo=UTC), datetime(2026, 10, 25, 6, tzinfo=UTC), id="fall"),
    ],
)
async def test_dst_days_through_the_scheduler_match_cronspec(start: datetime, end: datetime) -> None:
    schedules = {"daily": "30 2 * * *", "hourly": "0 * * * *", "quarter": "*/15 * * * *"}
    configs = jobs(*(job(name, expr, timezone="Europe/Skopje") for name, expr in schedules.items()))
    scheduler, clock, fired, _ = make(configs, start=start)
    async with running(scheduler):
        await clock.run_until(end)
    for name, expr in schedules.items():
        assert fired.of(name) == expected(expr, name, start, end, "Europe/Skopje")
    assert len(fired.of("daily")) == 1
    hourly = fired.of("hourly")  # real time: one fire per real hour, whatever the clocks do
    assert [b - a for a, b in zip(hourly, hourly[1:])] == [timedelta(hours=1)] * (len(hourly) - 1)
    nominal = [request.scheduled_for for request in fired.requests]
    assert nominal == sorted(nominal)


async def test_five_thousand_jobs_fire_in_order_with_one_wake_up_per_fire_time() -> None:
    count = 5000
    configs = jobs(*(job(f"j{i}", f"{i % 60} {(i // 60) % 24} * * *") for i in range(count)))
    scheduler, clock, fired, _ = make(configs)
    async with running(scheduler):
        await clock.run_until(at(hours=24))
    assert len(fired.requests) == count
    nominal = [request.scheduled_for for request in fired.requests]
    assert nominal == sorted(nominal)
    assert fired.moments == nominal
    assert {request.job: request.scheduled_for for request in fired.requests} == {
        f"j{i}": at(i % 60, hours=(i // 60) % 24) if i % 1440 else at(hours=24) for i in range(count)
    }
    # The loop slept once before each distinct fire time, and once more after the last.
    assert len(clock.sleep_calls) == len(set(nominal)) + 1


def test_a_missed_fire_that_is_not_caught_up_is_logged() -> None:
    scheduler, _, _, log = make(
        jobs(job("j", "0 * * * *", misfire_grace_s=600)), start=at(hours=12, minutes=30), last_fires={"j": at(hours=10)}
    )
    assert scheduler.catch_up() == []
    (entry,) = [fields for _, event, fields in log.entries if event == "scheduler.misfire_skipped"]
    assert entry["job"] == "j" and entry["newest_missed"] == at(hours=12).isoformat()
