"""Fire times in the past: the fires missed while jobd was down (`misfire = "run_all"`) and the
fire times of a backfill range; and, for the scheduler, the next fire that will run.

All are read from the job's schedule in its time zone with the scheduler's DST rules
(CronSpec.next_after), so a past range holds exactly the fires jobd would have made. A job's
`FireWindow` (calendars, active period) leaves fires out; a day that cannot hold a running fire is
jumped over whole, not walked fire by fire.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from jobd.calendars import FireWindow
from jobd.cronspec import CronSpec

# Counting the missed fires that are not run stops here: the count is only logged, and a
# seconds schedule down for a month would otherwise be walked fire by fire.
COUNT_LIMIT = 10_000
# How far ahead the next fire that runs is looked for: a window that lets none run in ten years
# (an `only` calendar with no day left) leaves the job with no next run.
SEARCH_HORIZON = timedelta(days=3660)
# A backfill lists at most this many excluded fire times; past them it jumps over excluded days.
EXCLUDED_LIST_LIMIT = 1000
_EARLIER = timedelta(milliseconds=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Missed:
    """The missed fires to run, oldest first, and those left out (the oldest ones)."""

    run: list[datetime]
    left_out: int  # at most COUNT_LIMIT
    left_out_capped: bool  # more than COUNT_LIMIT were left out
    first_left_out: datetime | None


def runnable_after(spec: CronSpec, tz: ZoneInfo, window: FireWindow | None, after: datetime) -> datetime | None:
    """The first fire strictly after `after` that the window lets run (aware UTC); None when
    there is none within SEARCH_HORIZON."""
    fire = spec.next_after(after, tz).astimezone(UTC)
    if window is None:
        return fire
    horizon = fire + SEARCH_HORIZON
    while window.reason(fire) is not None:
        resume = window.skip_forward(fire)
        if resume is None:
            return None
        fire = spec.next_after(resume, tz).astimezone(UTC)
        if fire > horizon:
            return None
    return fire


def newest_runnable(
    spec: CronSpec, tz: ZoneInfo, window: FireWindow | None, start: datetime, end: datetime
) -> datetime | None:
    """The newest fire in (start, end] that the window lets run (aware UTC), or None."""
    while True:
        fire = spec.newest_in(start, end, tz)
        if fire is None:
            return None
        fire = fire.astimezone(UTC)
        if window is None or window.reason(fire) is None:
            return fire
        before = window.skip_backward(fire)
        if before is None or before <= start:
            return None
        end = before


def missed_fires(
    spec: CronSpec, tz: ZoneInfo, last: datetime, now: datetime, keep: int, window: FireWindow | None = None
) -> Missed:
    """The fires in (last, now] that the window lets run: the newest `keep` of them (aware UTC,
    oldest first), found from the newest backwards so that a long downtime costs `keep`
    searches, not one per fire."""
    newest_first: list[datetime] = []
    end = now
    while len(newest_first) < keep:
        found = newest_runnable(spec, tz, window, last, end)
        if found is None:
            break
        newest_first.append(found)
        end = found - _EARLIER
    run = newest_first[::-1]
    first = runnable_after(spec, tz, window, last) if len(run) == keep else None
    if first is None or first >= run[0]:
        return Missed(run, 0, False, None)
    count = 0
    fire: datetime | None = first
    while fire is not None and fire < run[0] and count < COUNT_LIMIT:
        count += 1
        fire = runnable_after(spec, tz, window, fire)
    return Missed(run, count, fire is not None and fire < run[0], first)


@dataclasses.dataclass(frozen=True, slots=True)
class RangeFires:
    """The fire times of a range: those that run (at most `limit + 1`), and those the job's window
    excludes with the reason (the first EXCLUDED_LIST_LIMIT of them; `excluded_more` when more)."""

    times: list[datetime]
    excluded: list[tuple[datetime, str]]
    excluded_more: bool = False


def range_fires(
    spec: CronSpec, tz: ZoneInfo, start: datetime, end: datetime, limit: int, window: FireWindow | None = None
) -> RangeFires:
    """The fire times in [start, end), oldest first: at most `limit + 1` that run, so that a caller
    can tell a range holding more than `limit` from one holding exactly that."""
    times: list[datetime] = []
    excluded: list[tuple[datetime, str]] = []
    more = False
    fire = spec.next_after(start - _EARLIER, tz).astimezone(UTC)
    while fire < end and len(times) <= limit:
        reason = window.reason(fire) if window is not None else None
        if reason is None:
            times.append(fire)
        elif len(excluded) < EXCLUDED_LIST_LIMIT:
            excluded.append((fire, reason))
        else:
            more = True
            assert window is not None
            resume = window.skip_forward(fire)
            if resume is None:
                break
            fire = spec.next_after(resume, tz).astimezone(UTC)
            continue
        fire = spec.next_after(fire, tz).astimezone(UTC)
    return RangeFires(times, excluded, more)


def fire_times(spec: CronSpec, tz: ZoneInfo, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The fire times in [start, end) as aware UTC times, oldest first: at most `limit + 1`."""
    return range_fires(spec, tz, start, end, limit).times
