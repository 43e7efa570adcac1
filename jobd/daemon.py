"""The composition root: the Daemon owns the store, the bus, the run table, the workers and the
scheduler, starts them in order and stops them in reverse. `serve()` adds the HTTP listener,
signals and systemd notifications around it.

Shutdown is staged (SIGTERM/SIGINT): readiness turns 503 and intake stops at once; running jobs
get `[workers] shutdown_grace_s` to finish; what is left is interrupted and re-queued for the next
start; streams are told `shutdown`; the store is flushed and closed. A second signal skips the wait.
A hard deadline (grace + kill grace + STOP_SLACK_S) ends the process whatever is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import random
import resource
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from jobd.alerts import Alerter
from jobd.config import Config, ConfigError, is_loopback, load_config
from jobd.errors import OverlapConflict
from jobd.events import EventBus
from jobd.leftovers import STORE_VARIABLE, find_leftovers, stop_leftovers, store_marker
from jobd.metrics import Metrics
from jobd.models import TriggerSource, iso_ms, now_ms
from jobd.retention import Retention
from jobd.runs import INTERRUPTED, RunService, Submission
from jobd.scheduler import FireRequest, Scheduler, SystemClock
from jobd.store import SQLiteStore
from jobd.systemd import SystemdNotifier, clean_child_environ, listen_sockets
from jobd.workers import WorkerPool

# What a stop may take beyond the grace and the kill grace: pipes draining, streams told
# `shutdown`, the last commit. Past it the process exits anyway (see serve()).
STOP_SLACK_S = 2.0
# How often systemd's STATUS= line is refreshed (when it changed).
STATUS_INTERVAL_S = 5.0
# Background tasks that create or delete runs: stopped first, when the drain begins.
_INTAKE_TASKS = frozenset({"scheduler", "retention"})


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
        self.store = SQLiteStore(
            config.store.path, synchronous=config.store.synchronous, log=self.log.bind(component="store")
        )
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
            # Marks every command as this store's, so that a later start can find what a killed daemon left.
            environ={**self.environ, STORE_VARIABLE: store_marker(config.store.path)},
            log=self.log.bind(component="workers"),
        )
        self.alerter = Alerter(config.alerts, log=self.log.bind(component="alerts"))
        self.runs.finished_hooks.append(self.alerter.run_finished)
        self.metrics = Metrics(self)
        self.runs.finished_hooks.append(self.metrics.run_finished)
        self.retention = Retention(
            config.retention,
            store=self.store,
            runs=self.runs,
            logs_dir=config.store.logs_dir,
            log=self.log.bind(component="retention"),
        )
        self.notifier = SystemdNotifier.from_environ(self.environ, log=self.log.bind(component="systemd"))
        self.scheduler: Scheduler | None = None
        self.ready = False
        self.stopping = False
        self.closed = False
        self.stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self._started = True
        try:
            await self._start_parts()
        except BaseException:
            # aiohttp runs no cleanup for a startup that failed: stop what did start (the store's
            # threads and the workers would otherwise keep the process alive), then report.
            await self.close()
            raise

    async def _stop_leftovers(self) -> None:
        """Stop the commands a killed daemon of this store left running, before their runs are retried."""
        pids = find_leftovers(self.config.store.path)
        if pids:
            killed = await stop_leftovers(pids, self.config.workers.kill_grace_s)
            self.log.warning("leftover_processes_stopped", pids=pids, killed=killed)

    async def _start_parts(self) -> None:
        await self._stop_leftovers()
        await self.runs.load(on_interrupted=INTERRUPTED + " (found at start)")
        await self.alerter.start()
        self.pool.start()
        states = self.runs.job_states
        self.scheduler = Scheduler(
            self.config.jobs,
            self._fire,
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
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        self._tasks.append(asyncio.create_task(self.retention.run(), name="retention"))
        self._tasks.append(asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog"))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._status_loop(), name="systemd-status"))
        self.ready = True
        self.log.info(
            "jobd_started",
            jobs=len(self.config.jobs),
            workers=self.pool.concurrency,
            store=str(self.config.store.path),
            pending=self.runs.queued_count(),
        )

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop intake and the scheduler; give running jobs the grace, then interrupt them."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        self.runs.accepting = False
        grace = self.config.workers.shutdown_grace_s if grace_s is None else grace_s
        self.notifier.stopping()
        self.notifier.extend_timeout(grace + self.config.workers.kill_grace_s + STOP_SLACK_S + 1)
        for task in self._tasks:
            if task.get_name() in _INTAKE_TASKS:
                task.cancel()
        busy = self.pool.busy
        self.notifier.status(self.status_line())
        self.log.info("jobd_draining", running=busy, grace_s=grace)
        interrupted = await self.pool.stop(grace)
        # Workers do not wait for the commit of a run's end; streams must get it before `shutdown`.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_SLACK_S / 2):
                await self.runs.wait_settled()
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
        self.closed = True
        self.log.info("jobd_stopped")

    def status_line(self) -> str:
        """systemd's STATUS=: a short summary for `systemctl status`."""
        snapshot = self.runs.queue_snapshot(self.pool.concurrency)
        line = f"{len(self.config.jobs)} jobs, {snapshot['pending']} pending, {snapshot['processing']} running"
        return f"stopping: {line}" if self.stopping else line

    async def _status_loop(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line

    # -- scheduling --------------------------------------------------------------------------

    async def _fire(self, request: FireRequest) -> None:
        scheduled_ms = _epoch_ms(request.scheduled_for)
        state = self.runs.job_state(request.job)
        state.last_fire_at = scheduled_ms
        source = TriggerSource.CATCHUP if request.catchup else TriggerSource.CRON
        skipped: dict[str, Any] | None = None
        try:
            await self.runs.submit(
                request.job, [Submission()], triggered_by=source, scheduled_for=scheduled_ms, job_state=state
            )
            return
        except OverlapConflict as exc:
            state.skipped_fires += 1
            # The scheduler's clock, like scheduled_for, so the two can be compared.
            state.last_skipped_at = _epoch_ms(self.clock.now())
            skipped = {
                "job": request.job,
                "scheduled_for": iso_ms(scheduled_ms),
                "skipped_at": iso_ms(state.last_skipped_at),
                "skipped_fires": state.skipped_fires,
                "active_run_ids": exc.extra.get("active_run_ids", []),
                "reason": exc.detail,
            }
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

    async def set_paused(self, job: str, paused: bool) -> None:
        state = self.runs.job_state(job)
        state.paused = paused
        # Paused before the commit, so that no fire slips in while it is being written; resumed
        # only once it is stored.
        if paused and self.scheduler is not None:
            self.scheduler.pause(job)
        await self.store.write(job_states=[state])
        if not paused and self.scheduler is not None:
            self.scheduler.resume(job)
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
        ignored = [
            field.name
            for field in dataclasses.fields(Config)
            if field.name not in ("jobs", "source") and getattr(new, field.name) != getattr(self.config, field.name)
        ]
        self.config = dataclasses.replace(self.config, jobs=new.jobs)
        self.runs.reconfigure(new.jobs)
        if self.scheduler is not None:
            self.scheduler.reload(new.jobs)
        self.log.info("config_reloaded", jobs=len(new.jobs))
        if ignored:
            self.log.warning(
                "reload_needs_restart",
                sections=ignored,
                detail="only [jobs] changes apply on reload; restart jobd for the rest",
            )
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
    """Run jobd until SIGTERM/SIGINT; returns the process exit code.

    This owns the process: its signals, its systemd variables (taken out of os.environ, so that
    nothing jobd starts inherits them) and, once a stop begins, a hard deadline after which it
    exits whatever is stuck (a Python handler ignoring its cancellation, a thread that never
    returns). Everything accepted is in the store by then, or recovered at the next start.
    """
    from jobd.web import create_app

    daemon = Daemon(config, log=log)
    for key in set(os.environ) - set(clean_child_environ(os.environ)):
        del os.environ[key]  # the daemon has its copy; Python handlers' own subprocesses must not see them
    # The streams, plus room for the store, job processes' pipes and the API's other clients.
    soft, hard = raise_open_files_limit(config.server.max_streams + 1024)
    if soft != resource.RLIM_INFINITY and soft < config.server.max_streams:
        daemon.log.warning(
            "open_files_limit_low",
            limit=soft,
            hard_limit=hard,
            max_streams=config.server.max_streams,
            hint="raise LimitNOFILE= (systemd) or ulimit -Hn, or lower server.max_streams",
        )
    app = create_app(daemon)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    loop = asyncio.get_running_loop()
    deadline = _StopDeadline(daemon)

    def on_stop_signal(signame: str) -> None:
        workers = daemon.config.workers
        if daemon.stop_requested.is_set():
            daemon.log.warning("second_stop_signal", signal=signame)
            daemon.hurry()
            deadline.arm(workers.kill_grace_s + STOP_SLACK_S)
            return
        daemon.log.info("stop_signal", signal=signame)
        daemon.stop_requested.set()
        deadline.arm(workers.shutdown_grace_s + workers.kill_grace_s + STOP_SLACK_S)

    def on_reload_signal() -> None:
        if daemon.stopping:  # after STOPPING=1 systemd must not see READY=1 again
            daemon.log.warning("reload_ignored", reason="jobd is stopping")
            return
        daemon.notifier.reloading()
        daemon.reload()
        daemon.notifier.ready(daemon.status_line())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum.name)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    try:
        sockets = listen_sockets(daemon.environ)
        if not config.auth.enabled:
            _refuse_open_sockets(sockets)  # before anything starts
        await runner.setup()
        where = await _listen(runner, sockets, config)
        daemon.log.info("jobd_listening", url=where, addresses=[list(a)[:2] for a in runner.addresses])
        daemon.notifier.ready(daemon.status_line())
        tune_gc()
        await daemon.stop_requested.wait()
        await daemon.drain()
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path once start-up is over.

    A run leaves next to no cyclic garbage, but a burst keeps thousands of runs (and their futures
    and tasks) alive at once, and with the default thresholds the collector walked all of them again
    and again (a full collection of the heap, ~80 ms, every 2,400 runs): a third of the loop's time
    in a batch.
    What start-up made (modules, the config, the jobs' schedules, the app) lives as long as the
    process and is moved out of its sight for good: a full collection no longer walks it (~35 ms with
    200 jobs, a pause that landed on cron fires and on event deliveries; a freeze takes no time, a
    collection first would add to the start-up). Young collections come less often, and a full one
    after 100 rather than 10 of the middle generation.
    """
    gc.freeze()
    gc.set_threshold(2000, 10, 100)


async def _listen(runner: web.AppRunner, sockets: list[socket.socket], config: Config) -> str:
    """Serve on the sockets systemd passed, else on server.host:port; returns where, for the log."""
    if sockets:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        return "socket activation"
    host, port = config.server.host, config.server.port
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    port = port or runner.addresses[0][1]  # port = 0: the one the system picked
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _refuse_open_sockets(sockets: list[socket.socket]) -> None:
    """Without tokens the API is open: like server.host, a socket systemd passes must be local."""
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(sock.getsockname()[0]):
            raise ConfigError(
                f"socket activation: {sock.getsockname()[0]!r} is not a loopback address; "
                "without [auth] tokens jobd serves only 127.0.0.1 / ::1 / localhost"
            )


def _epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


class _StopDeadline:
    """A timer thread that ends the process if a stop overruns. It runs outside the event loop,
    so a blocked loop or an interpreter waiting at exit for stuck tasks cannot hold it up."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.at: float | None = None
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float) -> None:
        """Exit at most `seconds` from now (an earlier deadline already set stays)."""
        loop_time = asyncio.get_running_loop().time()
        if self.at is not None and self.at <= loop_time + seconds:
            return
        self.at = loop_time + seconds
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(seconds, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def _expired(self) -> None:
        closed = self.daemon.closed
        # Once the store is closed only leftovers (threads, tasks that ignore cancellation) remain.
        self.daemon.log.error("shutdown_deadline_exceeded", store_closed=closed)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0 if closed else 1)


__all__ = ["INTERRUPTED", "Daemon", "serve"]
