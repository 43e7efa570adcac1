"""Wake-ups at the times scheduled runs become startable.

The claim loop polls about once a second; a run triggered with `run_at` or `delay_s` would
otherwise start up to a poll interval late. The node that knows of such a run sets an alarm for
its `run_after`, one timer per distinct time, and wakes the claimers then. The poll stays behind
it: a node that dies before the time, or a database clock behind this node's, costs latency only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Alarms:
    def __init__(self, clock: Callable[[], int]) -> None:
        """`clock`: epoch ms, the clock run_after was computed with."""
        self.clock = clock
        self._timers: dict[tuple[int, Callable[[], None]], asyncio.TimerHandle] = {}

    def at(self, when_ms: int | None, wake: Callable[[], None]) -> None:
        """Call `wake()` at `when_ms` (nothing for a time already past: the run is startable now)."""
        if when_ms is None:
            return
        delay_ms = when_ms - self.clock()
        key = (when_ms, wake)
        if delay_ms <= 0 or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_ms / 1000, self._fired, key)

    def _fired(self, key: tuple[int, Callable[[], None]]) -> None:
        self._timers.pop(key, None)
        if self.clock() < key[0]:  # the loop's timer ran ahead of the wall clock: a claim now would find nothing
            self.at(*key)
            return
        key[1]()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
