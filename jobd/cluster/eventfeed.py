"""The cluster's events table, tailed into this node's in-memory bus.

Every change of any node writes its event row in its own transaction; this loop reads the settled
rows in feed order (see jobd.store.postgres.events) and hands them on with their feed key as the
event id. The feed order is the same on every node, so an id names one place in it for the whole
cluster: a client reconnecting to any node with Last-Event-ID continues right after it, from the
node's ring or, for what the ring does not hold, from the events table (`resume`). The bus hears
of changes only from here, so every node shows every run of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from jobd import events as bus
from jobd.cluster.wakeup import Signal
from jobd.store.postgres import events
from jobd.store.postgres.runs import Conn

BATCH = 1000
FAST_POLL_S = 0.25  # while other transactions are open the horizon may hold rows back
HELD_BACK_FIRST_S = 0.002


class EventTail:
    def __init__(
        self,
        connection: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        signal: Signal,
        deliver: Callable[[Sequence[events.Event]], Any],
        *,
        log: Any = None,
    ) -> None:
        self._connection = connection
        self._signal = signal
        self._deliver = deliver
        self.log = log or structlog.get_logger("jobd.cluster")
        self.position: events.Position = events.START
        # Where this node's feed began: the bus has every event after it, none before.
        self.started = 0
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._moved = asyncio.Event()

    async def start_at_end(self) -> None:
        async with self._connection() as conn:
            self.position = await events.feed_end(conn)
        self.started = events.key_of(self.position)
        self._task = asyncio.create_task(self._run(), name="pg-event-tail")

    async def catch_up(self) -> None:
        """Return once the bus has had every event committed before the call (while stopping:
        a stream must see a run's end before `shutdown`)."""
        async with self._connection() as conn:
            last = await events.last_committed(conn)
        while self.position < last and self._task is not None and not self._task.done():
            self._moved.clear()
            self._signal.set()
            await self._moved.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        retry_s = HELD_BACK_FIRST_S
        while True:
            try:
                async with self._connection() as conn:
                    batch, unbroken = await events.events_following(conn, self.position, BATCH)
                    waiting = not batch and await events.held_back(conn, self.position)
            except psycopg.Error as exc:
                self.log.warning("event_tail_failed", error=str(exc))
                await self._signal.wait()
                continue
            if not unbroken:
                # Retention keeps an hour of events at least: this node was away far longer.
                # Restarting it rebuilds its view of the cluster from the database.
                self.log.error("event_feed_gap", position=events.key_of(self.position))
            if batch:
                self.position = batch[-1].position
                result = self._deliver(batch)
                if asyncio.iscoroutine(result):
                    await result
                self._moved.set()
            if waiting:
                # A row is there, behind a transaction that has not ended yet: that one may send
                # no NOTIFY (a heartbeat), so look again soon, less soon each time.
                await self._signal.wait(retry_s)
                retry_s = min(FAST_POLL_S, retry_s * 2)
            elif len(batch) < BATCH:
                # A row written before the horizon moved is read on the next pass: look again
                # soon after a wake-up even if this pass found nothing new.
                retry_s = HELD_BACK_FIRST_S
                await self._signal.wait(FAST_POLL_S)

    async def resume(self, event_id: int, limit: int) -> tuple[int, list[bus.Event]] | None:
        """The feed key of `event_id` (a key, or the row id an earlier jobd sent) and the events
        after it, read from the events table as the bus would have published them; None when they
        cannot all be had (retention removed the id, or more than `limit` follow it), or the id
        names no event."""
        try:
            async with self._connection() as conn:
                if event_id >= events.KEY_BASE:
                    position: events.Position | None = events.position_of(event_id)
                else:
                    position = await events.event_position(conn, event_id)
                rows = None if position is None else await events.events_resumed(conn, position, limit)
        except psycopg.Error as exc:
            self.log.warning("event_resume_failed", error=str(exc))
            return None
        if rows is None or position is None:
            return None
        return events.key_of(position), [
            bus.Event(row.key, row.type, row.run_id, row.job, row.status, {"type": row.type, **decode(row)}, fed=True)
            for row in rows
        ]

    def key(self, event_id: int) -> int | None:
        """`event_id` as a feed key this node's ring can answer for; None for a row id (see
        `resume`) or a place before this node's feed began."""
        return event_id if event_id >= max(events.KEY_BASE, self.started) else None


def decode(event: events.Event) -> dict[str, Any]:
    """The message's fields (without its type), as written by encode()."""
    data: dict[str, Any] = json.loads(event.data)
    return data


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
