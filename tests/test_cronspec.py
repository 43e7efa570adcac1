from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from jobd.cronspec import CronSpec, describe

UTC = UTC
SKOPJE = "Europe/Skopje"  # 2026: 03-29 02:00 -> 03:00, 10-25 03:00 -> 02:00
NEW_YORK = "America/New_York"  # 2026: 03-08 02:00 -> 03:00, 11-01 02:00 -> 01:00
LORD_HOWE = "Australia/Lord_Howe"  # half-hour shifts: 04-05 02:00 -> 01:30, 10-04 02:00 -> 02:30


def fires(expr: str, zone: str, start: str, count: int, key: str = "job") -> list[str]:
    """The next `count` fires after `start` (ISO with offset) as ISO strings in the zone."""
    tz = ZoneInfo(zone)
    result = CronSpec.parse(expr, key).next_fires(datetime.fromisoformat(start), tz, count)
    instants = [fire.astimezone(UTC) for fire in result]
    assert instants == sorted(set(instants)), "fires must be strictly increasing instants"
    assert all(fire.tzinfo is tz for fire in result)
    return [fire.isoformat() for fire in result]


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"),
    [
        pytest.param(
            "*/15 * * * *",
            "UTC",
            "2026-01-01T00:07:00+00:00",
            [
                "2026-01-01T00:15:00+00:00",
                "2026-01-01T00:30:00+00:00",
                "2026-01-01T00:45:00+00:00",
                "2026-01-01T01:00:00+00:00",
            ],
            id="utc-every-15-min",
        ),
        pytest.param(
            "30 2 * * *",
            "UTC",
            "2026-01-01T02:30:00+00:00",
            ["2026-01-02T02:30:00+00:00", "2026-01-03T02:30:00+00:00"],
            id="utc-daily-strictly-after-a-fire",
        ),
        pytest.param(
            "0 9 * * 1-5",
            "UTC",
            "2026-01-02T08:00:00+00:00",  # a Friday
            ["2026-01-02T09:00:00+00:00", "2026-01-05T09:00:00+00:00", "2026-01-06T09:00:00+00:00"],
            id="utc-weekdays",
        ),
        pytest.param(
            "0 0 29 2 *",
            "UTC",
            "2026-01-01T00:00:00+00:00",
            ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
            id="utc-leap-day",
        ),
        pytest.param(
            "0 0 L * *",
            "UTC",
            "2026-02-01T00:00:00+00:00",
            ["2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"],
            id="utc-last-day-of-month",
        ),
        pytest.param(
            "30 2 * * *",
            SKOPJE,
            "2026-06-01T12:00:00+02:00",
            ["2026-06-02T02:30:00+02:00", "2026-06-03T02:30:00+02:00"],
            id="skopje-summer-daily",
        ),
        # Skopje, spring forward 2026-03-29 02:00 -> 03:00
        pytest.param(
            "30 2 * * *",
            SKOPJE,
            "2026-03-27T12:00:00+01:00",
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            id="skopje-spring-daily-0230-fires-at-gap-end",
        ),
        pytest.param(
            "0 * * * *",
            SKOPJE,
            "2026-03-29T00:30:00+01:00",
            ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
            id="skopje-spring-hourly-skips-missing-hour",
        ),
        pytest.param(
            "*/15 * * * *",
            SKOPJE,
            "2026-03-29T01:40:00+01:00",
            ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"],
            id="skopje-spring-every-15-min",
        ),
        pytest.param(
            "0 1,2,3 * * *",
            SKOPJE,
            "2026-03-29T00:00:00+01:00",
            ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T01:00:00+02:00"],
            id="skopje-spring-fixed-list-no-duplicate-at-gap-end",
        ),
        # Skopje, fall back 2026-10-25 03:00 -> 02:00
        pytest.param(
            "30 2 * * *",
            SKOPJE,
            "2026-10-24T12:00:00+02:00",
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"],
            id="skopje-fall-daily-0230-once",
        ),
        pytest.param(
            "30 2 * * *",
            SKOPJE,
            "2026-10-25T02:10:00+01:00",  # inside the second 02:xx
            ["2026-10-26T02:30:00+01:00"],
            id="skopje-fall-daily-from-second-copy",
        ),
        pytest.param(
            "0 * * * *",
            SKOPJE,
            "2026-10-25T00:30:00+02:00",
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
            id="skopje-fall-hourly-both-copies",
        ),
        pytest.param(
            "*/15 * * * *",
            SKOPJE,
            "2026-10-25T02:40:00+02:00",
            [
                "2026-10-25T02:45:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:15:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T02:45:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
            id="skopje-fall-every-15-min-both-copies",
        ),
        pytest.param(
            "0 */2 * * *",
            SKOPJE,
            "2026-10-25T01:30:00+02:00",
            ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T04:00:00+01:00"],
            id="skopje-fall-hour-step-follows-real-time",
        ),
        # New York
        pytest.param(
            "30 2 * * *",
            NEW_YORK,
            "2026-03-07T12:00:00-05:00",
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            id="new-york-spring-daily",
        ),
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            "2026-10-31T12:00:00-04:00",
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
            id="new-york-fall-daily-once",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            "2026-10-31T23:30:00-04:00",
            [
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
            id="new-york-fall-hourly",
        ),
        # Lord Howe: the clocks move by 30 minutes
        pytest.param(
            "15 2 * * *",
            LORD_HOWE,
            "2026-10-03T12:00:00+10:30",
            ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
            id="lord-howe-spring-daily-in-gap",
        ),
        pytest.param(
            "*/15 * * * *",
            LORD_HOWE,
            "2026-10-04T01:40:00+10:30",
            ["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00"],
            id="lord-howe-spring-every-15-min",
        ),
        pytest.param(
            "45 1 * * *",
            LORD_HOWE,
            "2026-04-04T12:00:00+11:00",
            ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
            id="lord-howe-fall-daily-once",
        ),
        pytest.param(
            "*/15 * * * *",
            LORD_HOWE,
            "2026-04-05T01:20:00+11:00",
            [
                "2026-04-05T01:30:00+11:00",
                "2026-04-05T01:45:00+11:00",
                "2026-04-05T01:30:00+10:30",
                "2026-04-05T01:45:00+10:30",
                "2026-04-05T02:00:00+10:30",
            ],
            id="lord-howe-fall-every-15-min",
        ),
    ],
)
def test_next_fires(expr: str, zone: str, start: str, expected: list[str]) -> None:
    assert fires(expr, zone, start, len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"),
    [
        pytest.param(
            "* * * * * */10",
            "UTC",
            "2026-01-01T00:00:05.5+00:00",
            ["2026-01-01T00:00:10+00:00", "2026-01-01T00:00:20+00:00", "2026-01-01T00:00:30+00:00"],
            id="every-10-seconds",
        ),
        pytest.param(
            "* * * * * *",
            "UTC",
            "2026-01-01T00:00:59.999+00:00",
            ["2026-01-01T00:01:00+00:00", "2026-01-01T00:01:01+00:00"],
            id="every-second",
        ),
        pytest.param(
            "0 0 * * * 30",
            "UTC",
            "2026-01-01T00:00:00+00:00",
            ["2026-01-01T00:00:30+00:00", "2026-01-02T00:00:30+00:00"],
            id="seconds-field-is-last",
        ),
        pytest.param(
            "0 2 * * * */30",
            SKOPJE,
            "2026-10-25T01:59:59+02:00",
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:30+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:00:30+01:00",
                "2026-10-26T02:00:00+01:00",
            ],
            id="seconds-step-follows-real-time-in-fall",
        ),
        pytest.param(
            "* * * * * */20",
            SKOPJE,
            "2026-03-29T01:59:30+01:00",
            ["2026-03-29T01:59:40+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:00:20+02:00"],
            id="seconds-step-skips-missing-hour",
        ),
    ],
)
def test_seconds_schedules(expr: str, zone: str, start: str, expected: list[str]) -> None:
    assert fires(expr, zone, start, len(expected)) == expected


@pytest.mark.parametrize(
    ("alias", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
@pytest.mark.parametrize("zone", ["UTC", SKOPJE])
def test_aliases_are_the_standard_expressions_not_hashed(alias: str, equivalent: str, zone: str) -> None:
    start = "2026-03-28T23:30:00+00:00"
    assert fires(alias, zone, start, 5, key="some-job") == fires(equivalent, zone, start, 5)


def test_hashed_minute_is_stable_per_name_and_spreads() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    minutes = {}
    for index in range(300):
        name = f"job-{index}"
        first = CronSpec.parse("H * * * *", name).next_fires(start, ZoneInfo("UTC"), 3)
        again = CronSpec.parse("H * * * *", name).next_fires(start, ZoneInfo("UTC"), 3)
        assert first == again
        assert {fire.minute for fire in first} == {first[0].minute}
        assert [b - a for a, b in zip(first, first[1:])] == [timedelta(hours=1)] * 2
        minutes[name] = first[0].minute
    counts = Counter(minutes.values())
    assert len(counts) >= 50  # 300 names over 60 minutes
    assert max(counts.values()) <= 15


def test_hashed_forms_follow_croniter_hash_id() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for expr in ["H H * * *", "H/15 * * * *", "H(0-29) 3 * * *", "H H(1-5) * * 1-5"]:
        ours = CronSpec.parse(expr, "nightly").next_fires(start, ZoneInfo("UTC"), 4)
        it = croniter(expr, start.replace(tzinfo=None), hash_id=b"nightly")
        theirs = [it.get_next(datetime).replace(tzinfo=UTC) for _ in range(4)]
        assert ours == theirs, expr


def test_hashed_values_match_croniter_for_many_names_and_specs_stay_independent() -> None:
    # Specs share croniter instances by expression (H resolved first); each must still give
    # its own name's times, and asking one must not disturb another.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    exprs = ["H * * * *", "H H * * 1-5", "H/20 H(8-17) * * *", "0 H(1-3) H * *", "*/5 * * * * H"]
    specs = {(expr, f"job-{n}"): CronSpec.parse(expr, f"job-{n}") for expr in exprs for n in range(60)}
    for (expr, name), spec in specs.items():
        it = croniter(expr, start.replace(tzinfo=None), hash_id=name.encode())
        theirs = [it.get_next(datetime).replace(tzinfo=UTC) for _ in range(3)]
        assert spec.next_fires(start, ZoneInfo("UTC"), 3) == theirs, (expr, name)
    assert (
        len({spec.next_after(start, ZoneInfo("UTC")) for (expr, _), spec in specs.items() if expr == "H * * * *"}) > 30
    )


def test_a_bad_hashed_field_is_refused_with_croniter_reason() -> None:
    with pytest.raises(ValueError, match="out of range"):
        CronSpec.parse("H(0-99) * * * *", "job")


@pytest.mark.parametrize(
    ("expr", "wall_clock"),
    [
        ("30 2 * * *", True),
        ("0 1,2 * * *", True),
        ("0 9-17 * * 1-5", True),
        ("H H * * *", True),
        ("0 0 * * * 30", True),
        ("@daily", True),
        ("@weekly", True),
        ("0 * * * *", False),
        ("@hourly", False),
        ("*/15 * * * *", False),
        ("0 */2 * * *", False),
        ("*/5 2 * * *", False),  # runs more often than hourly: real time, as in Vixie cron
        ("0 2 * * * */30", False),
        ("H/15 * * * *", False),
    ],
)
def test_dst_rule_is_chosen_from_the_minute_hour_and_seconds_fields(expr: str, wall_clock: bool) -> None:
    assert CronSpec.parse(expr, "job").wall_clock is wall_clock


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("@reboot", "@reboot"),
        ("@fortnightly", "unknown alias"),
        ("61 * * * *", "out of range"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * 2030", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("a b c d e", ""),
        ("*/0 * * * *", ""),
        ("0 0 30 2 *", "failed to find next date"),
        ("R * * * *", "random"),
        ("0 0 ? * * ?", "Question mark"),
    ],
)
def test_invalid_expressions_are_refused_with_a_reason(expr: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        CronSpec.parse(expr, "job")
    assert str(info.value)
    assert reason in str(info.value)


def test_next_after_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CronSpec.parse("* * * * *", "job").next_after(datetime(2026, 1, 1), ZoneInfo("UTC"))


@pytest.mark.parametrize(
    ("expr", "start", "end", "expected"),
    [
        ("0 * * * *", "2026-01-01T10:00:00+00:00", "2026-01-01T12:30:00+00:00", "2026-01-01T12:00:00+00:00"),
        ("0 * * * *", "2026-01-01T10:00:00+00:00", "2026-01-01T12:00:00+00:00", "2026-01-01T12:00:00+00:00"),
        ("0 * * * *", "2026-01-01T10:00:00+00:00", "2026-01-01T10:59:59+00:00", None),
        ("0 * * * *", "2026-01-01T12:00:00+00:00", "2026-01-01T12:00:00+00:00", None),
        ("* * * * * *", "2025-01-01T00:00:00+00:00", "2026-01-01T12:00:00.5+00:00", "2026-01-01T12:00:00+00:00"),
        ("30 2 * * *", "2020-01-01T00:00:00+00:00", "2026-03-29T12:00:00+00:00", "2026-03-29T01:00:00+00:00"),
        ("0 0 29 2 *", "2021-01-01T00:00:00+00:00", "2026-03-29T12:00:00+00:00", "2024-02-29T00:00:00+00:00"),
    ],
)
def test_newest_in(expr: str, start: str, end: str, expected: str | None) -> None:
    tz = ZoneInfo(SKOPJE if expr == "30 2 * * *" else "UTC")
    found = CronSpec.parse(expr, "job").newest_in(datetime.fromisoformat(start), datetime.fromisoformat(end), tz)
    assert (found.astimezone(UTC).isoformat() if found else None) == expected


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("* * * * *", "every minute"),
        ("*/15 * * * *", "every 15 minutes"),
        ("7 * * * *", "hourly at minute 7"),
        ("@hourly", "hourly at minute 0"),
        ("0 */2 * * *", "every 2 hours at minute 0"),
        ("30 2 * * *", "at 02:30 every day"),
        ("@daily", "at 00:00 every day"),
        ("0 9 * * 1-5", "at 09:00 every Monday to Friday"),
        ("0 18 * * sun", "at 18:00 every Sunday"),
        ("@weekly", "at 00:00 every Sunday"),
        ("15 4 1 * *", "at 04:15 on day 1 of every month"),
        ("@yearly", "at 00:00 on 1 January"),
        ("* * * * * */10", "every 10 seconds"),
        ("* * * * * *", "every second"),
        ("H * * * *", "H * * * *"),
        ("5,35 1-3 * * *", "5,35 1-3 * * *"),
        ("0 0 L * *", "0 0 L * *"),
    ],
)
def test_describe(expr: str, text: str) -> None:
    assert describe(expr) == text


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("H * * * *", "hourly at minute 6"),
        ("h * * * *", "hourly at minute 6"),
        ("H/15 * * * *", "every 15 minutes from minute 6"),
        ("H H * * *", "at 21:06 every day"),
        ("0 H * * *", "at 21:00 every day"),
        ("H H(0-5) * * 1-5", "at 03:06 every Monday to Friday"),
        ("* * * * * H", "every minute at second 50"),
        ("H 1-3 * * *", "6 1-3 * * *"),  # no words for it: the minute it fires at, as an expression
        ("H(0-29)/10 * * * *", "6-29/10 * * * *"),
        ("30 2 * * *", "at 02:30 every day"),  # nothing to hash
    ],
)
def test_describe_an_h_field_by_its_value_for_the_job(expr: str, text: str) -> None:
    assert describe(expr, "nightly") == text


@pytest.mark.parametrize("job", ["nightly", "backup", "report-7"])
def test_the_described_hash_is_the_one_that_fires(job: str) -> None:
    for expr, unit in (("H * * * *", "minute"), ("* * * * * H", "second")):
        fires = CronSpec.parse(expr, job).next_fires(datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("UTC"), 3)
        [value] = {getattr(fire, unit) for fire in fires}
        assert (
            describe(expr, job) == ("hourly at minute" if unit == "minute" else "every minute at second") + f" {value}"
        )


ZONES = ["UTC", SKOPJE, NEW_YORK, LORD_HOWE, "Europe/London", "America/Sao_Paulo"]
REAL_TIME = ["0 * * * *", "*/15 * * * *", "0 */2 * * *", "*/7 1-3 * * *", "* * * * * */13", "H/10 * * * *"]
WALL_CLOCK = ["30 2 * * *", "0 1,2,3 * * *", "45 1 * * 0", "H H * * *"]
STARTS = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC))


@settings(max_examples=80, deadline=None)
@given(zone=st.sampled_from(ZONES), expr=st.sampled_from(REAL_TIME + WALL_CLOCK), start=STARTS)
def test_fires_are_increasing_and_match_their_wall_time(zone: str, expr: str, start: datetime) -> None:
    tz = ZoneInfo(zone)
    spec = CronSpec.parse(expr, "prop")
    result = spec.next_fires(start, tz, 40)
    instants = [fire.astimezone(UTC) for fire in result]
    assert instants[0] > start
    assert all(a < b for a, b in zip(instants, instants[1:]))
    for fire in result:
        it = croniter(spec.fields, fire.replace(tzinfo=None) - timedelta(seconds=1), hash_id=b"prop")
        if it.get_next(datetime) != fire.replace(tzinfo=None):
            # Only a wall-clock schedule moves a fire: to the end of a gap, where the offset changes.
            assert expr in WALL_CLOCK
            before = (fire.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz)
            assert before.utcoffset() != fire.utcoffset()


@settings(max_examples=80, deadline=None)
@given(zone=st.sampled_from(ZONES), expr=st.sampled_from(REAL_TIME), start=STARTS)
def test_real_time_fires_are_exactly_the_instants_whose_wall_time_matches(
    zone: str, expr: str, start: datetime
) -> None:
    tz = ZoneInfo(zone)
    spec = CronSpec.parse(expr, "prop")
    result = [fire.astimezone(UTC) for fire in spec.next_fires(start, tz, 12)]
    expanded, _ = croniter.expand(spec.fields, hash_id=b"prop")
    minutes, hours = _allowed(expanded[0], 60), _allowed(expanded[1], 24)
    seconds = _allowed(expanded[5], 60) if len(expanded) == 6 else {0}
    step = timedelta(seconds=1 if len(expanded) == 6 else 60)
    probe = start.replace(microsecond=0, second=start.second if len(expanded) == 6 else 0) + step
    brute_force = []
    while probe <= result[-1]:
        wall = probe.astimezone(tz)
        if wall.second in seconds and wall.minute in minutes and wall.hour in hours:
            brute_force.append(probe)
        probe += step
    assert brute_force == result


def _allowed(values: list[int | str], size: int) -> set[int]:
    return set(range(size)) if values == ["*"] else {int(value) for value in values}


SIMPLE = [
    "* * * * * *",
    "* * * * *",
    "0 * * * *",
    "59 * * * *",
    "H * * * *",
    "@hourly",
    "@daily",
    "30 2 * * *",
    "H H * * *",
    "0 0 * * * 30",
    "7 * * * * 59",
    "* * * * * 0",
    "59 23 * * * 59",
]


@settings(max_examples=300, deadline=None)
@given(
    expr=st.sampled_from(SIMPLE),
    name=st.sampled_from(["a", "nightly", "job00042"]),
    wall=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
)
def test_the_arithmetic_path_finds_what_croniter_finds(expr: str, name: str, wall: datetime) -> None:
    # Simple schedules skip croniter's search: the next wall time must be the one croniter gives.
    spec = CronSpec.parse(expr, name)
    assert spec._cycle is not None
    assert spec._wall_next(wall) == spec._iter.get_next(datetime, start_time=wall)


@pytest.mark.parametrize(
    "expr", ["*/15 * * * *", "0 9 * * 1-5", "* 3 * * *", "0 0 1 * *", "* * * * * */2", "0,30 * * * *", "H/10 * * * *"]
)
def test_other_schedules_still_ask_croniter(expr: str) -> None:
    assert CronSpec.parse(expr, "job")._cycle is None
