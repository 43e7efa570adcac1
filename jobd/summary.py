"""What live streams start from and what the firehose summarizes, kept from the event bus.

`RunStates` remembers the last published `status_update` of every active run, so that a new
stream opens on a real event (its own id, a committed state) rather than on the in-memory run,
which may be a step ahead of its commit. `SummaryPublisher` is the one task that publishes the
firehose's `summary` message when the figures change.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from jobd.events import Event, EventBus
from jobd.lifecycle import Runs
from jobd.models import TERMINAL_STATUSES

TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)


class _Pool(Protocol):
    @property
    def concurrency(self) -> int: ...


class Daemon(Protocol):
    """What the summary reads from the daemon, named here so that this layer need not import the
    wiring above it (jobd.app's `Daemon` has these)."""

    @property
    def runs(self) -> Runs: ...

    @property
    def pool(self) -> _Pool: ...

    @property
    def bus(self) -> EventBus: ...


class RunStates:
    """A bus listener: the last published `status_update` of every active run."""

    def __init__(self) -> None:
        self.latest: dict[int, Event] = {}

    def __call__(self, event: Event) -> None:
        if event.type != "status_update" or event.run_id is None:
            return
        if event.status in TERMINAL:
            self.latest.pop(event.run_id, None)
        else:
            self.latest[event.run_id] = event


def summary(daemon: Daemon) -> dict[str, Any]:
    """What the firehose's `summary` message says: queue counts, workers busy, totals by status."""
    snapshot = daemon.runs.queue_snapshot(daemon.pool.concurrency)
    return {
        "queue": {"pending": snapshot["pending"], "processing": snapshot["processing"]},
        "workers": snapshot["workers"],
        "counts": snapshot["counts"],
    }


class SummaryPublisher:
    """Publishes `summary` to the firehose when the figures change.

    At most once per `interval_s`; nothing is computed while no firehose stream is open. The
    event is not kept for replay: a reconnecting client gets a fresh summary anyway.
    """

    def __init__(self, daemon: Daemon, interval_s: float) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self._dirty = asyncio.Event()
        self.last: dict[str, Any] | None = None

    def _on_publish(self, event: Event) -> None:
        if event.type == "status_update" and not event.coalescible:
            self._dirty.set()

    async def run(self) -> None:
        bus = self.daemon.bus
        bus.listeners.append(self._on_publish)
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if not bus.firehose_count:
                    self.last = None
                    continue
                data = summary(self.daemon)
                if data != self.last:
                    self.last = data
                    bus.publish("summary", data, replayable=False)
                await asyncio.sleep(self.interval_s)
        finally:
            bus.listeners.remove(self._on_publish)


__all__ = ["TERMINAL", "RunStates", "SummaryPublisher", "summary"]
