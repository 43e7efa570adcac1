"""The cluster's events table, tailed into this node's in-memory bus.

Every change of any node writes its event row in its own transaction; this loop reads the settled
rows in feed order (see jobd.store.postgres.events) and hands them on with their row id, which
is the SSE id: a client reconnecting to another node with Last-Event-ID continues where it was.
The bus hears of changes only from here, so every node shows every run of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from jobd.cluster.wakeup import Signal
from jobd.store.postgres import events
from jobd.store.postgres.runs import Conn

BATCH = 1000
FAST_POLL_S = 0.25  # while other transactions are open the horizon may hold rows back


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
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()

    async def start_at_end(self) -> None:
        async with self._connection() as conn:
            self.position = await events.feed_end(conn)
        self._task = asyncio.create_task(self._run(), name="pg-event-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with self._connection() as conn:
                    batch = await events.events_after(conn, self.position, BATCH)
            except psycopg.Error as exc:
                self.log.warning("event_tail_failed", error=str(exc))
                await self._signal.wait()
                continue
            if batch:
                self.position = batch[-1].position
                result = self._deliver(batch)
                if asyncio.iscoroutine(result):
                    await result
            if len(batch) < BATCH:
                # A row written before the horizon moved is read on the next pass: look again
                # soon after a wake-up even if this pass found nothing new.
                await self._signal.wait(FAST_POLL_S)


def decode(event: events.Event) -> dict[str, Any]:
    """The message's fields (without its type), as written by encode()."""
    data: dict[str, Any] = json.loads(event.data)
    return data


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
