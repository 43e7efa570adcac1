"""Wake-ups between nodes: LISTEN on a dedicated connection, a poll behind it, and coalesced NOTIFY.

A notification carries no data; it only makes a waiting loop look again sooner. Every loop that
waits on a channel also polls (about once a second, jittered), so a lost notification costs
latency, never a run. After the LISTEN connection drops, every channel is woken (catch-up), and
the connection is opened again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import structlog
from psycopg import sql

from jobd.store.postgres import connect
from jobd.store.postgres.events import notify
from jobd.store.postgres.runs import Conn

POLL_S = 1.0
MAX_BACKOFF_S = 5.0
NOTIFY_GAP_S = 0.05


class Signal:
    """A flag a loop waits on: set by a notification, by a local change, or by the poll timer."""

    __slots__ = ("_event", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._event = asyncio.Event()
        self._rng = rng

    def set(self) -> None:
        self._event.set()

    async def wait(self, poll_s: float = POLL_S) -> None:
        """Until set, or the poll interval (±20 %) is over. Cleared on return: a signal that
        arrives while the caller works is kept for its next wait, never dropped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_s * self._rng.uniform(0.8, 1.2)):
                await self._event.wait()
        self._event.clear()


class Listener:
    """One connection LISTENing on the cluster's channels, setting each channel's signals."""

    def __init__(self, dsn: str, channels: Iterable[str], *, rng: random.Random | None = None, log: Any = None) -> None:
        self.dsn = dsn
        self.rng = rng or random.Random()
        self.log = log or structlog.get_logger("jobd.cluster")
        self.signals: dict[str, Signal] = {channel: Signal(self.rng) for channel in channels}
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def signal(self, channel: str) -> Signal:
        return self.signals[channel]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wake_all(self) -> None:
        for signal in self.signals.values():
            signal.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                conn = await connect(self.dsn)
            except psycopg.Error as exc:
                failures += 1
                delay = min(MAX_BACKOFF_S, 0.1 * 2**failures) * self.rng.uniform(0.5, 1.0)
                self.log.warning("listen_connect_failed", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            try:
                async with conn:
                    for channel in self.signals:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected = True
                    failures = 0
                    self._wake_all()  # whatever was sent while not listening is looked for now
                    async for note in conn.notifies():
                        signal = self.signals.get(note.channel)
                        if signal is not None:
                            signal.set()
            except psycopg.Error as exc:
                self.log.warning("listen_connection_lost", error=str(exc))
            finally:
                self.connected = False
            self._wake_all()


class Notifier:
    """NOTIFY on a channel at most once per NOTIFY_GAP_S from this node: a burst of creations
    costs one notification (each NOTIFY takes a cluster-wide lock at commit)."""

    def __init__(self, connection: Callable[[], contextlib.AbstractAsyncContextManager[Conn]], channel: str) -> None:
        self._connection = connection
        self.channel = channel
        self._last = 0.0
        self._pending: asyncio.Task[None] | None = None

    def poke(self) -> None:
        if self._pending is not None and not self._pending.done():
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last + NOTIFY_GAP_S - loop.time())
        self._pending = loop.create_task(self._send(delay))

    async def _send(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._last = asyncio.get_running_loop().time()
        with contextlib.suppress(psycopg.Error):  # the others poll
            async with self._connection() as conn:
                await notify(conn, self.channel)

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
