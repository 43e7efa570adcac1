"""Calendars (sets of days) and a job's fire window: which fires run and which are excluded.

A calendar is a set of calendar days; a fire belongs to it when the fire's date in the job's
time zone does. A job's window combines the calendars it excludes, those it is limited to
(`only`) and its active period. Nothing here knows about cron: the scheduler, catch-up and
backfill ask `FireWindow.reason` of each fire, and jump over a day that cannot hold a running
fire with `skip_forward` / `skip_backward` instead of visiting its every fire.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

_DAY = timedelta(days=1)
_EARLIER = timedelta(milliseconds=1)


class IcsError(ValueError):
    """An iCalendar file that cannot be read or expanded; the message is one line."""


class IcsDays:
    """The days an iCalendar file's events cover, recurrences included, expanded one year at a
    time when first asked (a yearly RRULE has no end, so the file cannot be expanded whole)."""

    def __init__(self, text: bytes) -> None:
        # Imported here, not with the module: every `jobd` command loads the config package, and
        # these libraries would add to the start-up of each one, with or without an ics file.
        import icalendar

        try:
            self._calendar = icalendar.Calendar.from_ical(text)
        except Exception as exc:
            raise IcsError(f"not an iCalendar file ({_one_line(exc)})") from None
        self.digest = hashlib.sha256(text).hexdigest()
        self._years: dict[int, frozenset[date]] = {}
        try:
            years = [_day_of(event.decoded("DTSTART")).year for event in self._calendar.walk("VEVENT")]
        except Exception:
            raise IcsError("an event has no valid DTSTART") from None
        if years:  # expanded now so that a broken RRULE is found at load, not at a fire
            self._years[min(years)] = self._expand(min(years))

    def year(self, year: int) -> frozenset[date]:
        days = self._years.get(year)
        if days is None:
            try:
                days = self._expand(year)
            except IcsError:
                # The first year expanded at load; a later one that cannot be (a library's limit)
                # must not stop the scheduler: that year's events are left out.
                days = frozenset()
            self._years[year] = days
        return days

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and day in self.year(day.year)

    def _expand(self, year: int) -> frozenset[date]:
        import recurring_ical_events

        first, last = date(year, 1, 1), date(year, 12, 31)
        try:
            occurrences: Iterable[Any] = recurring_ical_events.of(self._calendar).between(first, last + _DAY)
            days: set[date] = set()
            for event in occurrences:
                days.update(day for day in _event_days(event.start, event.end) if first <= day <= last)
        except Exception as exc:
            raise IcsError(f"cannot expand its events ({_one_line(exc)})") from None
        return frozenset(days)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _day_of(value: date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _event_days(start: date, end: date) -> list[date]:
    """An all-day event covers DTSTART up to DTEND, not including DTEND's day (RFC 5545); a timed
    event every day it touches in its own time zone, the day it ends at midnight excluded."""
    first = _day_of(start)
    if isinstance(end, datetime):
        last = (end - _EARLIER).date() if isinstance(start, datetime) and end > start else first
    else:
        last = end - _DAY if end > first else first
    return [first + _DAY * n for n in range((last - first).days + 1)]


@dataclasses.dataclass(frozen=True, slots=True)
class Calendar:
    """`[calendars.NAME]`: the union of its dates, date ranges (inclusive), ISO weekdays
    (1 = Monday … 7 = Sunday) and the days of its iCalendar file."""

    name: str
    dates: frozenset[date] = frozenset()
    ranges: tuple[tuple[date, date], ...] = ()
    weekdays: frozenset[int] = frozenset()
    ics: IcsDays | None = dataclasses.field(default=None, compare=False)
    ics_digest: str | None = None  # compared instead of the file's days: an edited file differs

    def __contains__(self, day: object) -> bool:
        if not isinstance(day, date):
            return False
        return (
            day in self.dates
            or day.isoweekday() in self.weekdays
            or any(first <= day <= last for first, last in self.ranges)
            or (self.ics is not None and day in self.ics)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FireWindow:
    """The fires of a job that run: on no day of `exclude`, on a day of one of `only` (when
    given), and within [active_from, active_until] (aware UTC, both included)."""

    tz: ZoneInfo
    exclude: tuple[Calendar, ...] = ()
    only: tuple[Calendar, ...] = ()
    active_from: datetime | None = None
    active_until: datetime | None = None

    @property
    def restricts(self) -> bool:
        return bool(self.exclude or self.only or self.active_from or self.active_until)

    def reason(self, fire: datetime) -> str | None:
        """None when the fire runs; else why not: a calendar's name, `not in NAME[, NAME]`,
        `before active_from` or `after active_until`."""
        if self.active_from is not None and fire < self.active_from:
            return "before active_from"
        if self.active_until is not None and fire > self.active_until:
            return "after active_until"
        if not self.exclude and not self.only:
            return None
        day = fire.astimezone(self.tz).date()
        for calendar in self.exclude:
            if day in calendar:
                return calendar.name
        if self.only and not any(day in calendar for calendar in self.only):
            return "not in " + ", ".join(calendar.name for calendar in self.only)
        return None

    def skip_forward(self, fire: datetime) -> datetime | None:
        """For an excluded fire: the instant the next fire that may run is searched after (the
        end of its local day, or just before active_from); None when none ever runs again."""
        if self.active_until is not None and fire > self.active_until:
            return None
        if self.active_from is not None and fire < self.active_from:
            return self.active_from - _EARLIER
        return max(fire, self._day_start(fire.astimezone(self.tz).date() + _DAY) - _EARLIER)

    def skip_backward(self, fire: datetime) -> datetime | None:
        """For an excluded fire: the latest instant the previous fire that may run can be at (just
        before its local day, or active_until); None when none ever ran before."""
        if self.active_from is not None and fire < self.active_from:
            return None
        if self.active_until is not None and fire > self.active_until:
            return self.active_until
        return min(fire - _EARLIER, self._day_start(fire.astimezone(self.tz).date()) - _EARLIER)

    def _day_start(self, day: date) -> datetime:
        # A midnight that does not exist (a DST gap at 00:00) is read with the offset before the
        # gap, which is the gap's own instant: the day's first.
        return datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)
