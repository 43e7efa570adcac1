"""Fire times in the past: the fires missed while jobd was down (`misfire = "run_all"`) and the
fire times of a backfill range.

Both are read from the job's schedule in its time zone with the scheduler's DST rules
(CronSpec.next_after), so a past range holds exactly the fires jobd would have made.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from jobd.cronspec import CronSpec

# Counting the missed fires that are not run stops here: the count is only logged, and a
# seconds schedule down for a month would otherwise be walked fire by fire.
COUNT_LIMIT = 10_000
_EARLIER = timedelta(milliseconds=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Missed:
    """The missed fires to run, oldest first, and those left out (the oldest ones)."""

    run: list[datetime]
    left_out: int  # at most COUNT_LIMIT
    left_out_capped: bool  # more than COUNT_LIMIT were left out
    first_left_out: datetime | None


def missed_fires(spec: CronSpec, tz: ZoneInfo, last: datetime, now: datetime, keep: int) -> Missed:
    """The fires in (last, now]: the newest `keep` of them (aware UTC, oldest first), found from
    the newest backwards so that a long downtime costs `keep` searches, not one per fire."""
    newest_first: list[datetime] = []
    end = now
    while len(newest_first) < keep:
        fire = spec.newest_in(last, end, tz)
        if fire is None:
            break
        fire = fire.astimezone(UTC)
        newest_first.append(fire)
        end = fire - _EARLIER
    run = newest_first[::-1]
    if len(run) < keep or spec.next_after(last, tz) >= run[0]:
        return Missed(run, 0, False, None)
    first = spec.next_after(last, tz).astimezone(UTC)
    count, fire = 0, first
    while fire < run[0] and count < COUNT_LIMIT:
        count += 1
        fire = spec.next_after(fire, tz).astimezone(UTC)
    return Missed(run, count, fire < run[0], first)


def fire_times(spec: CronSpec, tz: ZoneInfo, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The fire times in [start, end) as aware UTC times, oldest first: at most `limit + 1`, so
    that a caller can tell a range holding more than `limit` from one holding exactly that."""
    times: list[datetime] = []
    fire = spec.next_after(start - _EARLIER, tz).astimezone(UTC)
    while fire < end and len(times) <= limit:
        times.append(fire)
        fire = spec.next_after(fire, tz).astimezone(UTC)
    return times
