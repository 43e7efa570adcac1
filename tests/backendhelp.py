"""A LocalBackend on a real SQLite store in tmp_path, publishing to a real event bus."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jobd.config import parse_config
from jobd.events import Event, EventBus
from jobd.lifecycle import INTERRUPTED, LocalBackend
from jobd.store import SQLiteStore


class Recorded:
    """The events published, as (type, run_id, status) and their data."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.listeners.append(self.events.append)

    def of(self, run_id: int) -> list[str]:
        return [str(e.status) for e in self.events if e.run_id == run_id and e.type == "status_update"]

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@contextlib.asynccontextmanager
async def local_backend(
    tmp_path: Path, jobs: dict[str, Any], *, store: SQLiteStore | None = None
) -> AsyncIterator[tuple[LocalBackend, SQLiteStore, Recorded]]:
    config = parse_config({"store": {"path": str(tmp_path / "jobd.db")}, "jobs": jobs}, environ={}, base_dir=tmp_path)
    store = store or SQLiteStore(config.store.path)
    await store.open()
    bus = EventBus(ring_size=1000, subscriber_buffer=100, first_id=1)
    backend = LocalBackend(jobs=config.jobs, store=store)
    backend.feed_to(bus)
    recorded = Recorded(bus)
    try:
        await backend.open(interrupted=INTERRUPTED)
        yield backend, store, recorded
    finally:
        await store.close()
