"""The composition root: `Daemon` builds jobd's services from the Config and says how each one is
started and stopped, as aiohttp cleanup contexts run in order (and in reverse on exit; a
context's cleanup runs only if its startup did): store → systemd watchdog → backend and bus → notifications → workers →
late/long watch → scheduler → retention → readiness.

Stopping is staged (`drain()`): readiness turns 503 and intake stops at once; running jobs get
`[workers] shutdown_grace_s` to finish; what is left is interrupted and re-queued for the next
start; then the contexts close in reverse (streams are told `shutdown`, the store is flushed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from jobd.alerts import AlertLog
from jobd.audit import AuditLog, AuditReads
from jobd.clock import SystemClock
from jobd.config import Config, ConfigError, load_config
from jobd.dburl import redact_url
from jobd.events import EventBus
from jobd.leftovers import STORE_VARIABLE, find_leftovers, stop_leftovers, store_marker
from jobd.lifecycle import INTERRUPTED, LocalBackend, Runs
from jobd.lifecycle.backend import RunBackend
from jobd.lifecycle.views import status_line
from jobd.metrics import Metrics
from jobd.models import now_ms
from jobd.notify.queue import Queue, SQLiteQueue
from jobd.notify.service import Notifications
from jobd.retention import Retention, SharedTables
from jobd.scheduler import Scheduler
from jobd.store import SQLiteStore
from jobd.store.base import StoreReads
from jobd.systemd import SystemdNotifier
from jobd.watch import Alerted, MemoryAlerted, Watcher
from jobd.workers import WorkerPool

if TYPE_CHECKING:
    from jobd.cluster import PostgresBackend

# What a stop may take beyond the grace and the kill grace: pipes draining, streams told
# `shutdown`, the last commit. Past it the process exits anyway (see server.py).
STOP_SLACK_S = 2.0
# How often systemd's STATUS= line is refreshed (when it changed).
STATUS_INTERVAL_S = 5.0

Context = Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Any = None,
        log: Any = None,
    ) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock or SystemClock()
        self.log = log or structlog.get_logger("jobd")
        self.cluster: PostgresBackend | None = None
        self.bus = EventBus(
            ring_size=config.events.ring_size,
            subscriber_buffer=config.events.subscriber_buffer,
            # Seeded from the clock so ids keep increasing across restarts (see EventBus); in a
            # cluster the ids are the events table's feed positions.
            first_id=now_ms() * 1000 if config.store.url is None else 1,
            shared_ids=config.store.url is not None,
            log=self.log.bind(component="events"),
        )
        self.store: StoreReads  # what the web layer reads; each backend writes in its own way
        self.backend: RunBackend
        shared: SharedTables | None = None  # a cluster's tables that retention trims too
        queue: Queue
        alerted: Alerted
        audit_reads: AuditReads
        if config.store.url is None:
            sqlite = SQLiteStore(
                config.store.path, synchronous=config.store.synchronous, log=self.log.bind(component="store")
            )
            self.store = sqlite
            queue = SQLiteQueue(sqlite)
            alerted = MemoryAlerted()
            self.backend = LocalBackend(jobs=config.jobs, store=sqlite, log=self.log.bind(component="runs"))
            self.audit = AuditLog(sqlite, sqlite)
            audit_reads = sqlite
        else:
            # Imported only here: a single node on SQLite never loads the PostgreSQL driver.
            from jobd.cluster import cluster_backend
            from jobd.notify.pgqueue import PostgresQueue
            from jobd.store.postgres.alerted import PostgresAlerted

            shared, self.cluster = cluster_backend(config, self.log.bind(component="runs"))
            self.store = shared
            queue = PostgresQueue(shared.pool)
            alerted = PostgresAlerted(shared.pool)
            self.backend = self.cluster
            self.audit = AuditLog(self.cluster.writer, shared)
            audit_reads = shared
        self.backend.set_groups(config.groups, config.workers.priority_aging_s)
        self.backend.feed_to(self.bus)
        self.runs = Runs(self.backend, scheduler_clock=self.clock.now)
        self.pool = WorkerPool(
            self.backend,
            concurrency=config.workers.concurrency,
            logs_dir=config.store.logs_dir,
            kill_grace_s=config.workers.kill_grace_s,
            log_tail_bytes=config.workers.log_tail_bytes,
            max_log_bytes=config.workers.max_log_bytes,
            # Marks every command as this store's, so that a later start can find what a killed daemon left.
            environ={**self.environ, STORE_VARIABLE: store_marker(config.store.path)},
            log=self.log.bind(component="workers"),
        )
        self.backend.on_finished(AlertLog(self.log.bind(component="alerts")).run_finished)
        self.notifications = Notifications(
            config.notifiers,
            queue,
            clock=now_ms,
            log=self.log.bind(component="notifications"),
            shared=config.store.url is not None,
        )
        self.backend.on_finished(self.notifications.run_finished)
        self.watcher = Watcher(
            self.backend,
            self.notifications,
            self.store,
            clock=self.clock,
            alerted=alerted,
            log=self.log.bind(component="watch"),
            pause=lambda job: self.runs.set_paused(job, True),
        )
        self.backend.on_finished(self.watcher.run_finished)
        self.metrics = Metrics(self)
        self.backend.on_finished(self.metrics.run_finished)
        self.retention = Retention(
            config.retention,
            runs=self.backend,
            logs_dir=config.store.logs_dir,
            shared=shared,
            notifications=self.notifications,
            audit=audit_reads,
            keep_events=config.events.ring_size,
            log=self.log.bind(component="retention"),
        )
        self.notifier = SystemdNotifier.from_environ(self.environ, log=self.log.bind(component="systemd"))
        self.scheduler: Scheduler | None = None
        self.ready = False
        self.started_at = now_ms()
        self.stopping = False
        self.closed = False
        self.stop_requested = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None

    def contexts(self) -> list[Context]:
        """The services' start and stop, in start order, for `app.cleanup_ctx`."""
        return [
            self._store,
            self._systemd,
            self._backend,
            self._notifications,
            self._workers,
            self._watch,
            self._schedule,
            self._retention,
            self._readiness,
        ]

    # -- the services' contexts --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _systemd(self, app: web.Application) -> AsyncIterator[None]:
        watchdog = asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog")
        try:
            yield
        finally:
            await _cancel(watchdog)
            self.notifier.close()

    @contextlib.asynccontextmanager
    async def _store(self, app: web.Application) -> AsyncIterator[None]:
        if self.config.store.url is not None:
            from jobd.cluster import migrate_at_start

            await migrate_at_start(self.config.store.url)
        await self.store.open()
        try:
            yield
        finally:
            await self.store.close()
            self.closed = True
            self.log.info("jobd_stopped")

    @contextlib.asynccontextmanager
    async def _backend(self, app: web.Application) -> AsyncIterator[None]:
        # The commands a killed daemon of this store left running are stopped before their runs are retried.
        pids = find_leftovers(self.config.store.path)
        if pids:
            killed = await stop_leftovers(pids, self.config.workers.kill_grace_s)
            self.log.warning("leftover_processes_stopped", pids=pids, killed=killed)
        await self.backend.open(interrupted=INTERRUPTED + " (found at start)")
        try:
            yield
        finally:
            self.backend.accepting = False
            if self.cluster is not None:
                await self.cluster.close()
            self.bus.close_all()

    @contextlib.asynccontextmanager
    async def _notifications(self, app: web.Application) -> AsyncIterator[None]:
        await self.notifications.start()
        try:
            yield
        finally:
            await self.notifications.stop()

    @contextlib.asynccontextmanager
    async def _workers(self, app: web.Application) -> AsyncIterator[None]:
        self.pool.start()
        try:
            yield
        finally:
            await self.drain(grace_s=None if self.stop_requested.is_set() else 0)

    @contextlib.asynccontextmanager
    async def _watch(self, app: web.Application) -> AsyncIterator[None]:
        self.watcher.start(self.backend.job_states)  # before the scheduler's catch-up moves the last fires
        try:
            yield
        finally:
            await self.watcher.stop()

    @contextlib.asynccontextmanager
    async def _schedule(self, app: web.Application) -> AsyncIterator[None]:
        states = self.backend.job_states
        self.scheduler = Scheduler(
            self.config.jobs,
            self.runs.fire,
            clock=self.clock,
            paused=[name for name, state in states.items() if state.paused],
            last_fires={
                name: datetime.fromtimestamp(state.last_fire_at / 1000, tz=UTC)
                for name, state in states.items()
                if state.last_fire_at is not None
            },
            rng=random.Random(),
            log=self.log.bind(component="scheduler"),
        )
        self.runs.use_scheduler(self.scheduler)
        self._scheduler_task = asyncio.create_task(self.scheduler.run(), name="scheduler")
        try:
            yield
        finally:
            await _cancel(self._scheduler_task)

    @contextlib.asynccontextmanager
    async def _retention(self, app: web.Application) -> AsyncIterator[None]:
        self.retention.start()
        try:
            yield
        finally:
            await self.retention.stop()

    @contextlib.asynccontextmanager
    async def _readiness(self, app: web.Application) -> AsyncIterator[None]:
        if self.notifier.enabled:
            self._status_task = asyncio.create_task(self._status_loop(), name="systemd-status")
        self.ready = True
        self.log.info(
            "jobd_started",
            jobs=len(self.config.jobs),
            workers=self.pool.concurrency,
            store=redact_url(self.config.store.url) if self.config.store.url else str(self.config.store.path),
            pending=self.runs.queued_count(),
        )
        try:
            yield
        finally:
            self.ready = False
            if self._status_task is not None:
                await _cancel(self._status_task)

    # -- stopping ----------------------------------------------------------------------------------

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop intake and the scheduler; give running jobs the grace, then interrupt them."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        self.backend.accepting = False
        grace = self.config.workers.shutdown_grace_s if grace_s is None else grace_s
        self.notifier.stopping()
        self.notifier.extend_timeout(grace + self.config.workers.kill_grace_s + STOP_SLACK_S + 1)
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
        self.retention.cancel()
        busy = self.pool.busy
        self.notifier.status(self.status_line())
        self.log.info("jobd_draining", running=busy, grace_s=grace)
        interrupted = await self.pool.stop(grace)
        # Workers do not wait for the commit of a run's end; streams must get it before `shutdown`.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SLACK_S / 2):
                await self.backend.wait_settled()
        self.log.info("jobd_drained", interrupted=interrupted, pending=self.runs.queued_count())

    def hurry(self) -> None:
        """Cut the grace short (a second stop signal)."""
        self.pool.hurry()

    def status_line(self) -> str:
        """systemd's STATUS=: a short summary for `systemctl status`."""
        backend = self.backend
        return status_line(
            len(self.config.jobs), backend.queued_count(), backend.processing_count(), stopping=self.stopping
        )

    async def _status_loop(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line

    # -- reload ------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file (SIGHUP): read and its handlers imported in a thread, applied
        here on the loop. Job changes apply; server/store changes need a restart."""
        if self.config.source is None:
            return False
        try:
            new = await asyncio.to_thread(load_config, self.config.source, environ=self.environ)
        except ConfigError as exc:
            self.log.error("reload_refused", error=str(exc))
            return False
        self.apply(new)
        return True

    def apply(self, new: Config) -> None:
        """A checked new configuration: its jobs and groups take effect now."""
        ignored = [
            field.name
            for field in dataclasses.fields(Config)
            if field.name not in ("jobs", "groups", "source", "defaults")
            and getattr(new, field.name) != getattr(self.config, field.name)
        ]
        jobs = new.jobs
        webhook = self.config.alerts.webhook_url is not None
        if (new.alerts.webhook_url is not None) != webhook:
            # The alerts notifier is made at start: whether there is one changes with a restart only.
            jobs = {name: dataclasses.replace(job, alert_webhook=webhook) for name, job in jobs.items()}
        self.config = dataclasses.replace(self.config, jobs=jobs, groups=new.groups)
        self.backend.set_groups(new.groups, self.config.workers.priority_aging_s)
        self.backend.reconfigure(jobs)
        if self.scheduler is not None:
            self.scheduler.reload(jobs)
        self.watcher.reconfigure()
        self.log.info("config_reloaded", jobs=len(jobs))
        if ignored:
            self.log.warning(
                "reload_needs_restart",
                sections=ignored,
                detail="only [jobs] and [groups] changes apply on reload; restart jobd for the rest",
            )


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
