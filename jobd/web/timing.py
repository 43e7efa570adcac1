"""When a triggered run may start: a trigger's `run_at` (an instant) or `delay_s` (seconds from now).

Both become the run's `run_after` (epoch ms), the field retries already wait on: the run is
committed PENDING at once and no backend starts it before then. A time already past means now.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from jobd.errors import BadRequest

# The longest delay_s: a year and a day. A longer wait is a typo (milliseconds for seconds) more
# often than a plan, and a schedule that far ahead belongs in the config.
MAX_DELAY_S = 366 * 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_EXAMPLE = "e.g. 2026-12-24T18:00:00Z or 2026-12-24T19:00:00+01:00"


def _run_at_ms(value: Any, field: str) -> int:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be an ISO-8601 time with a time zone ({_EXAMPLE})", field=field)
    try:
        when = datetime.fromisoformat(value.strip().upper())  # RFC 3339 allows a lowercase t and z
    except ValueError:
        raise BadRequest(f"{field} must be an ISO-8601 time with a time zone ({_EXAMPLE})", field=field) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest(f"{field} {value!r} has no time zone: add Z or an offset ({_EXAMPLE})", field=field)
    return -((_EPOCH - when) // _MS)  # rounded up to the millisecond: never earlier than asked


def _delay_ms(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{field} must be a number of seconds from 0 to {MAX_DELAY_S}", field=field)
    if not 0 <= value <= MAX_DELAY_S:
        raise BadRequest(f"{field} must be a number of seconds from 0 to {MAX_DELAY_S}", field=field)
    return -(-round(value * 1_000_000) // 1000)  # whole microseconds, rounded up to the millisecond


def run_after_of(body: Mapping[str, Any], now: int, *, prefix: str = "", default: int | None = None) -> int | None:
    """The `run_after` that `body`'s run_at or delay_s asks for (None: as soon as possible), or
    `default` when it gives neither (null is the same as absent). Raises BadRequest naming the field."""
    run_at, delay = body.get("run_at"), body.get("delay_s")
    if run_at is None and delay is None:
        return default
    if run_at is not None and delay is not None:
        raise BadRequest(f"give either {prefix}run_at or {prefix}delay_s, not both", field=f"{prefix}run_at")
    if delay is not None:
        at = now + _delay_ms(delay, prefix + "delay_s")
    else:
        at = _run_at_ms(run_at, prefix + "run_at")  # an instant is what the caller means, however far ahead
    return at if at > now else None
