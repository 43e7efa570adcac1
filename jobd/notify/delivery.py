"""The delivery loop: due notifications claimed under a lease, sent by at most `concurrency`
tasks at a time, each outcome recorded: delivered, or pending again after a doubling wait, or
failed once its notifier's `max_attempts` are used up (or at once after a 4xx).

Runs never wait on it: they only insert rows. The loop wakes when told (a run ended on this
node) and polls anyway, so rows written by another node, or before a restart, are found too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from jobd.config.notifiers import NotifierConfig
from jobd.notify.queue import Queue
from jobd.notify.senders import DeliveryError, send
from jobd.store.notifications import Notification

MAX_BACKOFF_S = 900.0
LEASE_SLACK_S = 60.0


def backoff_ms(config: NotifierConfig | None, attempts: int) -> int:
    """The wait after `attempts` failed attempts: retry_backoff_s, doubled each time, at most 15 min."""
    first = config.retry_backoff_s if config is not None else 10.0
    return round(min(MAX_BACKOFF_S, first * 2.0 ** (attempts - 1)) * 1000)


class Deliverer:
    def __init__(
        self,
        queue: Queue,
        notifiers: Mapping[str, NotifierConfig],
        *,
        clock: Callable[[], int],
        log: Any,
        poll_s: float = 1.0,
        concurrency: int = 8,
    ) -> None:
        self.queue = queue
        self.notifiers = notifiers
        self.clock = clock
        self.log = log
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.delivered = 0
        self.failed = 0
        self.delivered_to: collections.Counter[str] = collections.Counter()  # by notifier
        self.failed_to: collections.Counter[str] = collections.Counter()
        self._wake = asyncio.Event()
        self._free = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None
        longest = max((n.timeout_s for n in notifiers.values()), default=10.0)
        self.lease_ms = round((longest + LEASE_SLACK_S) * 1000)

    def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self._loop_task = asyncio.create_task(self._run(), name="notifications")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        in_flight = list(self._tasks)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if in_flight:  # sent again by the next start (or another node) without waiting out the lease
            with contextlib.suppress(Exception):
                await self.queue.release(in_flight)
        if self.session is not None:
            await self.session.close()

    async def _run(self) -> None:
        while True:
            free = self.concurrency - len(self._tasks)
            if free > 0:
                try:
                    now = self.clock()
                    claimed = await self.queue.claim(now, now + self.lease_ms, free)
                except Exception as exc:  # the store is down a while: try again at the next poll
                    self.log.warning("notifications_claim_failed", error=str(exc))
                    claimed = []
                for notification in claimed:
                    task = asyncio.create_task(self._deliver(notification), name=f"notify-{notification.id}")
                    self._tasks[notification.id] = task
                    task.add_done_callback(functools.partial(self._done, notification.id))
                if len(claimed) == free:
                    await self._free.wait()  # more may be due: claim again once a slot frees
                    self._free.clear()
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()

    def _done(self, key: int, _: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        self._free.set()

    async def _deliver(self, notification: Notification) -> None:
        config = self.notifiers.get(notification.notifier)
        assert self.session is not None
        try:
            if config is None:
                raise DeliveryError(f"no notifier {notification.notifier!r} is configured", retry=False)
            await send(config, notification.payload, self.session)
        except DeliveryError as exc:
            await self._failed(notification, config, exc)
            return
        except Exception as exc:  # a bug in a sender: recorded like a failure, with its type
            self.log.exception("notification_error", id=notification.id)
            await self._failed(notification, config, DeliveryError(f"{type(exc).__name__}: {exc}"))
            return
        self.delivered += 1
        self.delivered_to[notification.notifier] += 1
        self.log.info(
            "notification_delivered",
            id=notification.id,
            job=notification.job,
            notifier=notification.notifier,
            on=notification.event,
            attempts=notification.attempts + 1,
        )
        await self._record(notification, "delivered", None, None)

    async def _failed(self, notification: Notification, config: NotifierConfig | None, exc: DeliveryError) -> None:
        attempts = notification.attempts + 1
        limit = config.max_attempts if config is not None else 1
        now = self.clock()
        if exc.retry and attempts < limit:
            next_at = now + backoff_ms(config, attempts)
            self.log.warning(
                "notification_retry",
                id=notification.id,
                notifier=notification.notifier,
                attempts=attempts,
                error=str(exc),
                retry_in_ms=next_at - now,
            )
            await self._record(notification, "pending", str(exc), next_at)
            return
        self.failed += 1
        self.failed_to[notification.notifier] += 1
        self.log.error(
            "notification_failed", id=notification.id, notifier=notification.notifier, attempts=attempts, error=str(exc)
        )
        await self._record(notification, "failed", str(exc), None)

    async def _record(self, notification: Notification, status: str, error: str | None, next_at: int | None) -> None:
        try:
            await self.queue.record(
                notification.id, status=status, error=error, next_attempt_at=next_at, now=self.clock()
            )
        except Exception as exc:  # its lease runs out and it is sent again: at least once
            self.log.warning("notification_not_recorded", id=notification.id, status=status, error=str(exc))
