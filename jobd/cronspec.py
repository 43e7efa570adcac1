"""Schedule maths: the next fire time of a cron expression in a time zone.

Pure functions of (expression, zone, instant): no clock is read here.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter


@dataclasses.dataclass(frozen=True, slots=True)
class CronSpec:
    expr: str
    hash_key: str

    @classmethod
    def parse(cls, expr: str, hash_key: str) -> CronSpec:
        """Validate `expr`; raises ValueError with croniter's reason."""
        try:
            croniter(expr, datetime(2000, 1, 1), hash_id=hash_key.encode())
        except Exception as exc:  # croniter raises several unrelated types
            raise ValueError(str(exc)) from None
        return cls(expr, hash_key)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """The first fire strictly after the aware instant `after`, as an aware time in `tz`."""
        it = croniter(self.expr, after.astimezone(tz), hash_id=self.hash_key.encode())
        return it.get_next(datetime)

    def next_fires(self, after: datetime, tz: ZoneInfo, count: int) -> list[datetime]:
        fires: list[datetime] = []
        for _ in range(count):
            after = self.next_after(after, tz)
            fires.append(after)
        return fires
