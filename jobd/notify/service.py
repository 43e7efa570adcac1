"""`Notifications`: the queue, its delivery loop and the snoozes, as the daemon, the API and the
late/long alerts (see `notify`) use them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from jobd.config import JobConfig
from jobd.config.notifiers import NotifierConfig
from jobd.errors import NotFound, Unavailable
from jobd.models import Run, RunStatus, TriggerSource
from jobd.notify import plan
from jobd.notify.delivery import Deliverer
from jobd.notify.queue import Queue
from jobd.notify.senders import send
from jobd.store.notifications import Notification

SNOOZE_REFRESH_S = 5.0


class Notifications:
    def __init__(
        self,
        notifiers: Mapping[str, NotifierConfig],
        queue: Queue,
        *,
        clock: Callable[[], int],
        log: Any,
        shared: bool = False,
        poll_s: float = 1.0,
        concurrency: int = 8,
    ) -> None:
        """`shared`: other nodes write to the same queue and snoozes (a cluster)."""
        self.notifiers = notifiers
        self.queue = queue
        self.clock = clock
        self.log = log
        self.shared = shared
        self.deliverer = Deliverer(queue, notifiers, clock=clock, log=log, poll_s=poll_s, concurrency=concurrency)
        self._snoozes: dict[str, int] = {}
        self._refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.queue.start()
        self._snoozes = await self.queue.snoozes()
        self.deliverer.start()
        if self.shared:
            self._refresh = asyncio.create_task(self._refresh_loop(), name="snoozes")

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await self.deliverer.stop()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(SNOOZE_REFRESH_S)
            with contextlib.suppress(Exception):  # shown a little late at worst
                self._snoozes = await self.queue.snoozes()

    def run_finished(self, job: JobConfig, run: Run, *_: Any) -> None:
        """An on_finished hook: the run's notifications are committed; deliver them now."""
        if job.alert_webhook or any(job.notify.of(event) for event in ("success", "failure", "recovery")):
            self.deliverer.wake()

    async def notify(self, job: JobConfig, event: str, run: Run | None = None, **fields: Any) -> int:
        """Notify `job`'s `on_<event>` notifiers of an event that is no run's start or end (`late`,
        `long`): committed at once, then delivered like the others (a snoozed job's are recorded
        `snoozed`). Extra `fields` go into the event (e.g. reason="started 10 min late"). Returns
        how many notifications were made."""
        made = plan.make(job, event, run, self.clock(), **fields)
        if made:
            await self.queue.add(made)
            self.deliverer.wake()
        return len(made)

    async def test(self, name: str) -> dict[str, Any]:
        """Send a sample event to one notifier now, past the queue; raises DeliveryError."""
        config = self.notifiers.get(name)
        if config is None:
            raise NotFound(f"no notifier {name!r}")
        now = self.clock()
        sample = Run(id=0, job="example", status=RunStatus.FAILED, triggered_by=TriggerSource.MANUAL, created_at=now)
        sample.started_at, sample.finished_at, sample.updated_at = now - 1500, now, now
        sample.error, sample.exit_code = "a test notification from jobd notify-test", 1
        event = plan.payload("failure", "example", sample, now, consecutive_failures=1, test=True)
        event["text"] = f"jobd: a test notification to {name!r}"
        if self.deliverer.session is None:
            raise Unavailable("notifications are not running yet")
        await send(config, event, self.deliverer.session)
        self.log.info("notification_test_sent", notifier=name)
        return event

    async def snooze(self, job: str, until: int | None) -> None:
        await self.queue.snooze(job, until)
        if until is None:
            self._snoozes.pop(job, None)
        else:
            self._snoozes[job] = until
        self.log.info("job_snoozed" if until is not None else "job_unsnoozed", job=job, until=until)

    def snoozed_until(self, job: str) -> int | None:
        until = self._snoozes.get(job)
        return until if until is not None and until > self.clock() else None

    async def page(
        self,
        *,
        job: str | None,
        statuses: tuple[str, ...],
        before_id: int | None,
        limit: int,
        jobs: tuple[str, ...] | None = None,
    ) -> list[Notification]:
        return await self.queue.page(job=job, statuses=statuses, before_id=before_id, limit=limit, jobs=jobs)

    async def trim(self, *, before: int, limit: int) -> int:
        return await self.queue.trim(before=before, limit=limit)
