"""The composition root: the Daemon owns the store, the bus, the run table, the workers and the
scheduler, starts them in order and stops them in reverse. `serve()` adds the HTTP listener,
signals and systemd notifications around it.

Shutdown is staged (SIGTERM/SIGINT): readiness turns 503 and intake stops at once; running jobs
get `[workers] shutdown_grace_s` to finish; what is left is interrupted and re-queued for the next
start; streams are told `shutdown`; the store is flushed and closed. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import resource
import signal
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from jobd import cronspec
from jobd.alerts import Alerter
from jobd.config import Config, ConfigError, JobConfig, load_config
from jobd.errors import OverlapConflict
from jobd.events import EventBus
from jobd.metrics import Metrics
from jobd.models import TriggerSource, iso_ms, now_ms
from jobd.runs import RunService, Submission
from jobd.scheduler import FireRequest, Scheduler, SystemClock
from jobd.store import SQLiteStore
from jobd.systemd import SystemdNotifier, clean_child_environ, listen_sockets
from jobd.workers import INTERRUPTED, WorkerPool


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
        self.store = SQLiteStore(config.store.path, synchronous=config.store.synchronous)
        self.bus = EventBus(
            ring_size=config.events.ring_size,
            subscriber_buffer=config.events.subscriber_buffer,
            # Seeded from the clock so ids keep increasing across restarts (see EventBus).
            first_id=now_ms() * 1000,
            log=self.log.bind(component="events"),
        )
        self.runs = RunService(jobs=config.jobs, store=self.store, bus=self.bus, log=self.log.bind(component="runs"))
        self.pool = WorkerPool(
            self.runs,
            concurrency=config.workers.concurrency,
            logs_dir=config.store.logs_dir,
            kill_grace_s=config.workers.kill_grace_s,
            log_tail_bytes=config.workers.log_tail_bytes,
            max_log_bytes=config.workers.max_log_bytes,
            environ=clean_child_environ(self.environ),
            log=self.log.bind(component="workers"),
        )
        self.alerter = Alerter(config.alerts, log=self.log.bind(component="alerts"))
        self.runs.finished_hooks.append(self.alerter.run_finished)
        self.metrics = Metrics(self)
        self.runs.finished_hooks.append(self.metrics.run_finished)
        self.notifier = SystemdNotifier.from_environ(self.environ, log=self.log.bind(component="systemd"))
        self.scheduler: Scheduler | None = None
        self.ready = False
        self.stopping = False
        self.stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self._started = True
        await self.runs.load(on_interrupted="interrupted: jobd stopped while the run was in progress (found at start)")
        await self.alerter.start()
        self.pool.start()
        states = self.runs.job_states
        self.scheduler = Scheduler(
            self.config.jobs,
            self._fire,
            clock=self.clock,
            paused=[name for name, state in states.items() if state.paused],
            last_fires={
                name: datetime.fromtimestamp(state.last_fire_at / 1000, tz=timezone.utc)
                for name, state in states.items()
                if state.last_fire_at is not None
            },
            rng=random.Random(),
            log=self.log.bind(component="scheduler"),
        )
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        self._tasks.append(asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog"))
        self.ready = True
        self.log.info("jobd_started", jobs=len(self.config.jobs), workers=self.pool.concurrency,
                      store=str(self.config.store.path), pending=self.runs.queued_count())

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop intake and the scheduler; give running jobs the grace, then interrupt them."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        self.runs.accepting = False
        self.notifier.stopping()
        grace = self.config.workers.shutdown_grace_s if grace_s is None else grace_s
        self.notifier.extend_timeout(grace + self.config.workers.kill_grace_s + 5)
        for task in self._tasks:
            if task.get_name() == "scheduler":
                task.cancel()
        busy = self.pool.busy
        self.log.info("jobd_draining", running=busy, grace_s=grace)
        interrupted = await self.pool.stop(grace)
        self.log.info("jobd_drained", interrupted=interrupted, pending=self.runs.queued_count())

    def hurry(self) -> None:
        self.pool.hurry()

    async def close(self) -> None:
        await self.drain(grace_s=0 if not self.stop_requested.is_set() else None)
        self.bus.close_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.alerter.close()
        if self._started:
            await self.store.close()
            self._started = False
        self.notifier.close()
        self.log.info("jobd_stopped")

    # -- scheduling --------------------------------------------------------------------------

    async def _fire(self, request: FireRequest) -> None:
        scheduled_ms = _epoch_ms(request.scheduled_for)
        state = self.runs.job_state(request.job)
        state.last_fire_at = scheduled_ms
        source = TriggerSource.CATCHUP if request.catchup else TriggerSource.CRON
        skipped: dict[str, Any] | None = None
        try:
            await self.runs.submit(request.job, [Submission()], triggered_by=source, scheduled_for=scheduled_ms,
                                   job_state=state)
            return
        except OverlapConflict as exc:
            state.skipped_fires += 1
            # The scheduler's clock, like scheduled_for, so the two can be compared.
            state.last_skipped_at = _epoch_ms(self.clock.now())
            skipped = {"job": request.job, "scheduled_for": iso_ms(scheduled_ms),
                       "skipped_at": iso_ms(state.last_skipped_at), "skipped_fires": state.skipped_fires,
                       "active_run_ids": exc.extra.get("active_run_ids", []), "reason": exc.detail}
            self.log.info("fire_skipped", **skipped)
        await self.store.write(job_states=[state])
        if skipped is not None:
            # Published once committed, like every run change: a listener never sees a count the store lacks.
            self.bus.publish("fire_skipped", skipped, job=request.job)

    def next_run_at(self, job: str) -> int | None:
        if self.scheduler is None or self.runs.job_state(job).paused:
            return None
        at = self.scheduler.next_run_at(job)
        return None if at is None else round(at.timestamp() * 1000)

    @staticmethod
    def local_time(epoch_ms: int | None, zone: str) -> str | None:
        if epoch_ms is None:
            return None
        local = datetime.fromtimestamp(epoch_ms / 1000, tz=ZoneInfo(zone))
        return local.isoformat(timespec="seconds")

    @staticmethod
    def describe_schedule(job: JobConfig) -> str | None:
        return cronspec.describe(job.schedule) if job.schedule else None

    async def set_paused(self, job: str, paused: bool) -> None:
        state = self.runs.job_state(job)
        state.paused = paused
        await self.store.write(job_states=[state])
        if self.scheduler is not None:
            (self.scheduler.pause if paused else self.scheduler.resume)(job)
        self.log.info("job_paused" if paused else "job_resumed", job=job)

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP). Job changes apply; server/store changes need a restart."""
        if self.config.source is None:
            return False
        try:
            new = load_config(self.config.source, environ=self.environ)
        except ConfigError as exc:
            self.log.error("reload_refused", error=str(exc))
            return False
        self.config = dataclasses.replace(self.config, jobs=new.jobs)
        self.runs.jobs = dict(new.jobs)
        if self.scheduler is not None:
            self.scheduler.reload(new.jobs)
        self.log.info("config_reloaded", jobs=len(new.jobs))
        return True


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft limit on open files towards `wanted`, as far as the hard limit allows; returns
    (soft, hard). Every SSE stream holds a descriptor, and a shell's default soft limit (1024) is
    far below server.max_streams; the hard limit is usually much higher."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


async def serve(config: Config, *, log: Any = None) -> int:
    """Run jobd until SIGTERM/SIGINT; returns the process exit code."""
    from jobd.web import create_app

    daemon = Daemon(config, log=log)
    # The streams, plus room for the store, job processes' pipes and the API's other clients.
    soft, hard = raise_open_files_limit(config.server.max_streams + 1024)
    if soft != resource.RLIM_INFINITY and soft < config.server.max_streams:
        daemon.log.warning("open_files_limit_low", limit=soft, hard_limit=hard, max_streams=config.server.max_streams,
                           hint="raise LimitNOFILE= (systemd) or ulimit -Hn, or lower server.max_streams")
    app = create_app(daemon)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    loop = asyncio.get_running_loop()

    def on_stop_signal(signame: str) -> None:
        if daemon.stop_requested.is_set():
            daemon.log.warning("second_stop_signal", signal=signame)
            daemon.hurry()
            return
        daemon.log.info("stop_signal", signal=signame)
        daemon.stop_requested.set()

    def on_reload_signal() -> None:
        daemon.notifier.reloading()
        daemon.reload()
        daemon.notifier.ready(status_line(daemon))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum.name)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    try:
        await runner.setup()
        sockets = listen_sockets(daemon.environ)
        if sockets:
            for sock in sockets:
                await web.SockSite(runner, sock).start()
            where = "socket activation"
        else:
            site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
            await site.start()
            where = f"http://{config.server.host}:{config.server.port}"
        daemon.log.info("jobd_listening", url=where, addresses=[list(a)[:2] for a in runner.addresses])
        daemon.notifier.ready(status_line(daemon))
        await daemon.stop_requested.wait()
        await daemon.drain()
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


def _epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def status_line(daemon: Daemon) -> str:
    snapshot = daemon.runs.queue_snapshot(daemon.pool.concurrency)
    return (f"{len(daemon.config.jobs)} jobs, {snapshot['pending']} pending, "
            f"{snapshot['processing']} running")


__all__ = ["Daemon", "INTERRUPTED", "serve"]
