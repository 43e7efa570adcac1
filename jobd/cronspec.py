"""Schedule maths: the fire times of a cron expression in a time zone.

Pure functions of (expression, zone, instant): no clock is read here.

croniter only ever sees naive wall-clock times; mapping wall times to instants across
daylight-saving changes is done here, following Vixie cron:

* "wall-clock" schedules (minute, hour and seconds fields all without `*` or a step, e.g.
  `30 2 * * *`) fire once per matching wall time: in a repeated hour at its first
  occurrence, and a wall time skipped by a gap fires at the first instant after the gap;
* every other schedule (`0 * * * *`, `*/15 * * * *`, `0 */2 * * *`, seconds schedules) follows
  real time: it fires at every instant whose local wall time matches, so twice in a
  repeated hour and never in a skipped one.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import HashExpander

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_UTC = UTC
_SECOND = timedelta(seconds=1)
# Offset changes are searched for in steps of this size; two changes inside one step
# that cancel each other out would be missed, and no zone has those.
_PROBE = timedelta(hours=12)
_RANDOM_PART = re.compile(r"r(\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_HASH_PART = re.compile(r"h(\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_STEP_TO_END = re.compile(r"(\d+)-59/(\d+)")  # `H/15` in the minute field hashes to e.g. `6-59/15`
_REFERENCE = datetime(2000, 1, 1)


@dataclasses.dataclass(frozen=True, slots=True)
class CronSpec:
    expr: str
    hash_key: str
    # Derived in __post_init__: the croniter form of `expr` and the DST rule it follows.
    fields: str = dataclasses.field(init=False, repr=False, compare=False)
    wall_clock: bool = dataclasses.field(init=False, repr=False, compare=False)
    _iter: Any = dataclasses.field(init=False, repr=False, compare=False)
    _cycle: Callable[[datetime], datetime] | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = _normalise(self.expr)
        parts = fields.split()
        precise = parts[:2] + parts[5:]  # minute, hour and (if given) seconds
        wall_clock = not any("*" in part or "/" in part for part in precise)
        resolved = _resolve_hashes(parts, self.hash_key)
        try:
            it = _compile(resolved)
        except Exception as exc:  # croniter raises several unrelated types
            raise ValueError(str(exc) or type(exc).__name__) from None
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "wall_clock", wall_clock)
        object.__setattr__(self, "_iter", it)
        object.__setattr__(self, "_cycle", _simple_cycle(resolved.split()))

    @classmethod
    def parse(cls, expr: str, hash_key: str) -> CronSpec:
        """Validate `expr`; raises ValueError with the reason."""
        return _parse(expr, hash_key)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """The first fire strictly after the aware instant `after`, as an aware time in `tz`."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        # Fires fall on whole seconds, so flooring `after` changes nothing.
        start = after.astimezone(_UTC).replace(microsecond=0)
        if self.wall_clock:
            fire = self._next_wall_clock(start, tz)
        else:
            fire = self._next_real_time(start, tz)
        return fire.astimezone(tz)

    def next_fires(self, after: datetime, tz: ZoneInfo, count: int) -> list[datetime]:
        fires: list[datetime] = []
        for _ in range(count):
            after = self.next_after(after, tz)
            fires.append(after)
        return fires

    def newest_in(self, start: datetime, end: datetime, tz: ZoneInfo) -> datetime | None:
        """The newest fire in (start, end], or None; O(log(end - start)) steps, not one per fire."""
        if self.next_after(start, tz) > end:
            return None
        # Double a look-back window from `end` until it holds a fire, then bisect.
        # `lo` always has a fire in (lo, end], `hi` never does.
        top = end.astimezone(_UTC).replace(microsecond=0)
        hi, width = top, _SECOND
        lo = max(start, top - width)
        while self.next_after(lo, tz) > end:
            hi, width = lo, width * 2
            lo = max(start, top - width)
        while hi - lo > _SECOND:
            mid = lo + (hi - lo) / 2
            if self.next_after(mid, tz) <= end:
                lo = mid
            else:
                hi = mid
        return self.next_after(lo, tz)

    def _wall_next(self, wall: datetime) -> datetime:
        """The first matching naive wall time strictly after `wall`."""
        if self._cycle is not None:
            return self._cycle(wall)
        try:
            fire: datetime = self._iter.get_next(datetime, start_time=wall)
        except Exception as exc:
            raise ValueError(f"{self.expr!r}: no fire time after {wall:%Y-%m-%d %H:%M:%S}: {exc}") from None
        return fire

    def _next_wall_clock(self, start: datetime, tz: ZoneInfo) -> datetime:
        # Each matching wall time maps to one instant and that mapping never decreases,
        # so walk wall times forward; the only ones skipped are in the second copy of a
        # repeated hour, which already fired in the first copy.
        wall = start.astimezone(tz).replace(tzinfo=None)
        while True:
            wall = self._wall_next(wall)
            fire = _first_instant(wall, tz)
            if fire > start:
                return fire

    def _next_real_time(self, start: datetime, tz: ZoneInfo) -> datetime:
        # Between two offset changes local time is UTC plus a constant, so the first
        # matching wall time gives the first fire unless an offset change comes first;
        # then the search restarts at the change.
        instant, inclusive = start, False
        while True:
            offset = _offset(instant, tz)
            wall = (instant + offset).replace(tzinfo=None)
            fire = (self._wall_next(wall - _SECOND if inclusive else wall) - offset).replace(tzinfo=_UTC)
            change = _next_change(instant, fire, tz)
            if change is None:
                return fire
            instant, inclusive = change, True


def describe(expr: str, hash_key: str | None = None) -> str:
    """A short English description of common cron forms; other forms are returned as written.

    `H` fields are described by the values they hash to for `hash_key` (the job's name), as the
    scheduler fires them; a form with them that has no words is returned with those values in.
    Without a hash key they stay as written.
    """
    text = " ".join(expr.split())
    alias = ALIASES.get(text.lower())
    parts = (alias or text).split()
    if hash_key is not None and any(_HASH_PART.fullmatch(part) for part in parts):
        text = _resolve_hashes(parts, hash_key)
        parts = text.split()
    if len(parts) == 6:
        if parts[:5] == ["*"] * 5:
            if parts[5].isdigit() and int(parts[5]) < 60:
                return f"every minute at second {int(parts[5])}"
            return _every(parts[5], "second") or text
        return text
    if len(parts) != 5:
        return text
    minute, hour, dom, month, dow = parts
    if hour == "*" and (dom, month, dow) == ("*", "*", "*"):
        if minute.isdigit():
            return f"hourly at minute {int(minute)}"
        return _every(minute, "minute") or text
    if not minute.isdigit():
        return text
    if hour.startswith("*/") and hour[2:].isdigit() and (dom, month, dow) == ("*", "*", "*"):
        return f"every {int(hour[2:])} hours at minute {int(minute)}"
    if not hour.isdigit() or int(hour) > 23 or int(minute) > 59:
        return text
    at = f"at {int(hour):02d}:{int(minute):02d}"
    if (dom, month, dow) == ("*", "*", "*"):
        return f"{at} every day"
    if dom == "*" and month == "*":
        days = _weekdays(dow)
        return f"{at} every {days}" if days else text
    if dom.isdigit() and month == "*" and dow == "*":
        return f"{at} on day {int(dom)} of every month"
    if dom.isdigit() and month.isdigit() and dow == "*" and 1 <= int(month) <= 12:
        return f"{at} on {int(dom)} {calendar.month_name[int(month)]}"
    return text


def _normalise(expr: str) -> str:
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise ValueError("@reboot is not supported: jobd fires jobs only at times of day")
        try:
            return ALIASES[text.lower()]
        except KeyError:
            raise ValueError(f"unknown alias {text!r} (known: {', '.join(ALIASES)})") from None
    parts = text.split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday) or 6 with seconds last, found {len(parts)}"
        )
    for part in parts:
        if any(_RANDOM_PART.fullmatch(item) for item in part.split(",")):
            raise ValueError("R (random) is not supported; use H for a stable spread")
    return text


# Performance: see docs/performance.md (Cron: arithmetic for simple schedules)
def _simple_cycle(parts: list[str]) -> Callable[[datetime], datetime] | None:
    """The next wall time after a given one, by arithmetic, for the schedules that need no croniter:
    any date, and every second, every minute at second S, every hour at M:S or every day at H:M:S
    (most of what is scheduled: `@hourly`, `H * * * *`, `* * * * * *`). None for the others.
    Start-up asks for one fire per job, and each fire for the next one."""
    minute, hour, dom, month, dow = parts[:5]
    if (dom, month, dow) != ("*", "*", "*"):
        return None
    units = [(parts[5] if len(parts) == 6 else "0", 60), (minute, 60), (hour, 24)]  # second first
    fixed = 0
    while fixed < 3 and units[fixed][0].isdigit() and int(units[fixed][0]) < units[fixed][1]:
        fixed += 1
    if any(value != "*" for value, _ in units[fixed:]):
        return None  # a step, a list or a range, or a fixed field above a `*`
    period, offset = 1, 0  # in seconds, the offset into the day
    for value, size in units[:fixed]:
        offset += int(value) * period
        period *= size

    def next_wall(wall: datetime) -> datetime:
        midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
        into = (wall - midnight) // _SECOND
        return midnight + timedelta(seconds=into + ((offset - into) % period or period))

    return next_wall


def _resolve_hashes(parts: list[str], hash_key: str) -> str:
    """The expression with each H field replaced by what croniter's hash_id makes of it.

    Done field by field with croniter's own expander, so the values are exactly those of
    `croniter(expr, hash_id=...)`, while the result is an ordinary expression that many
    jobs can share (see _compile).
    """
    hash_id = hash_key.encode()
    # croniter hands its expanders the class itself (croniter._expand); the stub wants an instance.
    expander = HashExpander(croniter)  # type: ignore[arg-type]
    return " ".join(
        expander.expand(part.lower(), index, part.lower(), hash_id=hash_id) if _HASH_PART.fullmatch(part) else part
        for index, part in enumerate(parts)
    )


# Config validation and the scheduler both parse every job's schedule; a spec is an immutable
# value, so the second parse (and a reload's) is a lookup. Sized for tens of thousands of jobs.
@functools.lru_cache(maxsize=65536)
def _parse(expr: str, hash_key: str) -> CronSpec:
    return CronSpec(expr, hash_key)


@functools.lru_cache(maxsize=4096)
def _compile(fields: str) -> Any:
    """A validated croniter for an expression without H.

    Building one costs far more than asking it for a time, and thousands of jobs share a
    few expressions, so they share iterators too: every query passes its own start_time,
    which resets all the iterator's state.
    """
    it = croniter(fields, _REFERENCE)
    it.get_next(datetime)  # refuses expressions that never fire, e.g. 30 February
    return it


def _offset(instant: datetime, tz: ZoneInfo) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _next_change(start: datetime, end: datetime, tz: ZoneInfo) -> datetime | None:
    """The first whole-second instant in (start, end] whose UTC offset differs from start's."""
    base = _offset(start, tz)
    lo = start
    while lo < end:
        hi = min(lo + _PROBE, end)
        if _offset(hi, tz) != base:
            while hi - lo > _SECOND:
                mid = lo + max(1, (hi - lo) // _SECOND // 2) * _SECOND
                if _offset(mid, tz) == base:
                    lo = mid
                else:
                    hi = mid
            return hi
        lo = hi
    return None


def _first_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant a wall-clock schedule fires for `wall`: its first occurrence, or the gap's end."""
    early = wall.replace(tzinfo=tz, fold=0).astimezone(_UTC)
    late = wall.replace(tzinfo=tz, fold=1).astimezone(_UTC)
    if early <= late:  # an ordinary or a repeated wall time
        return early
    # In a gap fold=0 reads the wall time with the offset from before the change, which
    # lands after it; the change itself lies between the two readings.
    change = _next_change(late, early, tz)
    assert change is not None
    return change


def _every(field: str, unit: str) -> str | None:
    """Words for `*`, `*/N` and `A-59/N` in the minute or the seconds field."""
    if field == "*":
        return f"every {unit}"
    if field.startswith("*/") and field[2:].isdigit():
        step = int(field[2:])
        return f"every {unit}" if step == 1 else f"every {step} {unit}s"
    stepped = _STEP_TO_END.fullmatch(field)
    if stepped is not None and int(stepped[2]) > 0 and int(stepped[1]) < 60:
        start, step = int(stepped[1]), int(stepped[2])
        return f"every {unit} from {unit} {start}" if step == 1 else f"every {step} {unit}s from {unit} {start}"
    return None


_DAY_NAMES = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_DAY_ABBR = {name[:3].lower(): index for index, name in enumerate(_DAY_NAMES[:7])}


def _weekdays(field: str) -> str | None:
    def day(token: str) -> int | None:
        token = token.lower()
        if token.isdigit() and int(token) <= 7:
            return int(token)
        return _DAY_ABBR.get(token)

    names = []
    for item in field.split(","):
        first, dash, last = item.partition("-")
        a, b = day(first), day(last) if dash else None
        if a is None or (dash and b is None):
            return None
        names.append(f"{_DAY_NAMES[a]} to {_DAY_NAMES[b]}" if dash and b is not None else _DAY_NAMES[a])
    return ", ".join(names)
