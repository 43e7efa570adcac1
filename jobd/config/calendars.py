"""`[calendars.NAME]` and a job's `exclude`, `only`, `active_from` and `active_until`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jobd.calendars import Calendar, FireWindow, IcsDays, IcsError
from jobd.config.errors import ConfigError
from jobd.config.sections import JOB_NAME
from jobd.config.table import Table, type_name

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_RANGE_DAYS = 366 * 100


def parse_calendars(t: Table, base_dir: Path) -> dict[str, Calendar]:
    calendars = {name: _calendar(name, t.table(name), base_dir) for name in list(t.raw)}
    t.done()
    return calendars


def _calendar(name: str, t: Table, base_dir: Path) -> Calendar:
    if not JOB_NAME.match(name):
        raise ConfigError(
            f"{t.path}: calendar names use letters, digits, '_', '-', '.' (not starting with punctuation)"
        )
    if not any(t.has(key) for key in ("dates", "ranges", "weekdays", "ics")):
        raise ConfigError(f"{t.path}: give at least one of dates, ranges, weekdays or ics")
    dates = t.get("dates", (list,), [], "a list of dates")
    ranges = t.get("ranges", (list,), [], "a list of tables {from, to}")
    weekdays = t.get("weekdays", (list,), [], "a list of weekdays")
    ics_path = t.string("ics")
    ics = _ics(t.key("ics"), base_dir / ics_path) if ics_path is not None else None
    calendar = Calendar(
        name=name,
        dates=frozenset(_date(f"{t.key('dates')}[{i}]", value) for i, value in enumerate(dates)),
        ranges=tuple(_range(Table(raw, f"{t.key('ranges')}[{i}]")) for i, raw in enumerate(ranges)),
        weekdays=frozenset(_weekday(f"{t.key('weekdays')}[{i}]", value) for i, value in enumerate(weekdays)),
        ics=ics,
        ics_digest=ics.digest if ics is not None else None,
    )
    t.done()
    return calendar


def _date(key: str, value: Any) -> date:
    """A calendar day: a TOML local date (2026-12-25) or a string "2026-12-25"."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
        raise ConfigError(f"{key}: {value!r} is not a date (YYYY-MM-DD)")
    raise ConfigError(f"{key}: must be a date (YYYY-MM-DD), not {type_name(value)}")


def _range(t: Table) -> tuple[date, date]:
    for key in ("from", "to"):
        if not t.has(key):
            raise ConfigError(f"{t.key(key)}: required")
    first = _date(t.key("from"), t.get("from", (str, date), None, "a date"))
    last = _date(t.key("to"), t.get("to", (str, date), None, "a date"))
    t.done()
    if last < first:
        raise ConfigError(f"{t.key('to')}: {last.isoformat()} is before from ({first.isoformat()})")
    if (last - first).days > _MAX_RANGE_DAYS:
        raise ConfigError(f"{t.path}: longer than 100 years")
    return first, last


_WEEKDAY_NAMES = {
    name: number
    for number, names in enumerate(
        zip(WEEKDAYS, ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")), 1
    )
    for name in names
}


def _weekday(key: str, value: Any) -> int:
    """ISO numbers (1 = Monday … 7 = Sunday; 0 is Sunday too, as in cron) or mon … sun."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value or 7
    if isinstance(value, str) and value.lower() in _WEEKDAY_NAMES:
        return _WEEKDAY_NAMES[value.lower()]
    raise ConfigError(f"{key}: {value!r} is not a weekday (mon … sun, or 1 = Monday … 7 = Sunday)")


def _ics(key: str, path: Path) -> IcsDays:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        return IcsDays(text)
    except IcsError as exc:
        raise ConfigError(f"{key}: {str(path)!r}: {exc}") from None


def parse_window(t: Table, zone: str, schedule: str | None, calendars: Mapping[str, Calendar]) -> FireWindow | None:
    """The job's `exclude`, `only`, `active_from` and `active_until`; None when it has none."""
    if schedule is None:
        given = [key for key in ("exclude", "only", "active_from", "active_until") if t.has(key)]
        if given:
            raise ConfigError(f"{t.key(given[0])}: the job has no schedule (it limits which fires run)")
    tz = ZoneInfo(zone)
    exclude = tuple(_named(t, "exclude", calendars))
    only = tuple(_named(t, "only", calendars))
    active_from = _instant(t, "active_from", tz, end_of_day=False)
    active_until = _instant(t, "active_until", tz, end_of_day=True)
    if active_from is not None and active_until is not None and active_until < active_from:
        raise ConfigError(f"{t.key('active_until')}: before active_from")
    window = FireWindow(tz, exclude, only, active_from, active_until)
    return window if window.restricts else None


def _named(t: Table, key: str, calendars: Mapping[str, Calendar]) -> list[Calendar]:
    found = []
    for name in t.strings(key):
        calendar = calendars.get(name)
        if calendar is None:
            known = ", ".join(sorted(calendars)) or "none defined"
            raise ConfigError(f"{t.key(key)}: no calendar named {name!r} (calendars: {known})")
        found.append(calendar)
    return found


def _instant(t: Table, key: str, tz: ZoneInfo, *, end_of_day: bool) -> datetime | None:
    """A date (the whole day in the job's zone: from its first instant, or through its last) or a
    date-time (without an offset, in the job's zone), as aware UTC."""
    value = t.get(key, (str, date), None, "an ISO date or date-time")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{t.key(key)}: {value!r} is not an ISO date or date-time") from None
    if not isinstance(value, datetime):
        start = datetime.combine(value + timedelta(days=1 if end_of_day else 0), time(0), tzinfo=tz)
        return start.astimezone(UTC) - (timedelta(milliseconds=1) if end_of_day else timedelta(0))
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)
