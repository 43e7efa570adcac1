"""Time for the scheduler and the watchers: the `Clock` they are given (tests inject a fake one)
and real time, whose sleeps can end on time for a fire that is due."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    async def sleep(self, seconds: float, *, exact: bool = False) -> None:
        """Sleep for `seconds`; `exact`: a fire is due at the end, so wake on time, not late."""
        ...


# A timer wakes late: epoll counts whole milliseconds, rounded up, and the kernel lets a wait of
# t overrun by t/1000 (timer slack: 1 ms for a 1 s sleep); a busy VM adds more. An exact sleep
# ends each wait that much early and yields to the loop for its last ~1.5 ms.
_SLACK_S = 0.0015
_SLACK_FRACTION = 0.002


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float, *, exact: bool = False) -> None:
        if not exact:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            early = left - _SLACK_S - left * _SLACK_FRACTION
            await asyncio.sleep(early if early > 0 else 0)
