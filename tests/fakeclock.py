"""A settable clock for scheduler tests: time moves only when a test moves it."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

DEADLINE_S = 5.0  # how long a test waits for the scheduler to settle before failing


@dataclasses.dataclass(eq=False)
class Sleeper:
    number: int  # 1-based index into FakeClock.sleep_calls
    until: datetime
    future: asyncio.Future[None]


class FakeClock:
    def __init__(self, start: datetime) -> None:
        assert start.tzinfo is not None
        self._now = start.astimezone(UTC)
        self.sleep_calls: list[float] = []
        self._sleepers: list[Sleeper] = []
        self._watchers: list[asyncio.Future[None]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float, *, exact: bool = False) -> None:
        """Return once the fake time has been moved to now + seconds or later (always exactly)."""
        self.sleep_calls.append(seconds)
        sleeper = Sleeper(
            len(self.sleep_calls), self._now + timedelta(seconds=seconds), asyncio.get_running_loop().create_future()
        )
        self._sleepers.append(sleeper)
        self._notify()
        try:
            await sleeper.future
        finally:
            self._sleepers.remove(sleeper)

    def set(self, when: datetime) -> None:
        """Move the time (either way) and wake every sleeper whose time has come."""
        self._now = when.astimezone(UTC)
        for sleeper in self._sleepers:
            if sleeper.until <= self._now and not sleeper.future.done():
                sleeper.future.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + timedelta(seconds=seconds))

    def pending(self, since: int = 0) -> Sleeper | None:
        """The newest sleeper not yet woken whose sleep call is numbered above `since`."""
        waiting = [s for s in self._sleepers if s.number > since and not s.future.done()]
        return waiting[-1] if waiting else None

    async def sleeping(self, since: int = 0) -> Sleeper:
        """Wait until a sleep call numbered above `since` is in progress (fails after a deadline)."""
        async with asyncio.timeout(DEADLINE_S):
            while (sleeper := self.pending(since)) is None:
                watcher = asyncio.get_running_loop().create_future()
                self._watchers.append(watcher)
                await watcher
        return sleeper

    async def run_until(self, target: datetime) -> None:
        """Move time to `target`, stopping at every sleeper's deadline on the way so the
        sleeping code sees each moment it asked to wake at; returns once it sleeps again."""
        sleeper = await self.sleeping()
        while sleeper.until <= target:
            self.set(sleeper.until)
            sleeper = await self.sleeping(since=sleeper.number)
        self.set(target)

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)
