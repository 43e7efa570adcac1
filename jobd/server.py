"""The process: `serve()` runs one Daemon behind its HTTP listener until SIGTERM/SIGINT.

Signal handlers only set state; the work they ask for happens on the loop. A stop is staged
(Daemon.drain), a second stop signal cuts the grace short, and a hard deadline (grace + kill grace
+ STOP_SLACK_S) ends the process whatever is stuck. SIGHUP reloads the config file: it is read,
and its handler modules imported, in a thread, and applied on the loop.

This module also owns what belongs to the process rather than to the services: the environment
scrubbed of systemd's variables, the open files limit, socket activation, the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from jobd.app import STOP_SLACK_S, Daemon
from jobd.config import Config, ConfigError, is_loopback
from jobd.runner.confine import host_problems
from jobd.systemd import clean_child_environ, listen_sockets


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


class _Signals:
    """What the signal handlers ask for: a stop (a second one hurries it), a reload."""

    def __init__(self, daemon: Daemon, deadline: _StopDeadline) -> None:
        self.daemon = daemon
        self.deadline = deadline
        self.reload_requested = asyncio.Event()

    def stop(self, signame: str) -> None:
        daemon, workers = self.daemon, self.daemon.config.workers
        if daemon.stop_requested.is_set():
            daemon.log.warning("second_stop_signal", signal=signame)
            daemon.hurry()
            self.deadline.arm(workers.kill_grace_s + STOP_SLACK_S)
            return
        daemon.log.info("stop_signal", signal=signame)
        daemon.stop_requested.set()
        self.deadline.arm(workers.shutdown_grace_s + workers.kill_grace_s + STOP_SLACK_S)

    def reload(self) -> None:
        self.reload_requested.set()

    async def reloads(self) -> None:
        """Serve reload requests, one at a time; signals during one make one more."""
        daemon = self.daemon
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            if daemon.stopping:  # after STOPPING=1 systemd must not see READY=1 again
                daemon.log.warning("reload_ignored", reason="jobd is stopping")
                continue
            daemon.notifier.reloading()
            await daemon.reload()
            if not daemon.stopping:
                daemon.notifier.ready(daemon.status_line())


async def serve(config: Config, *, make_app: Callable[[Daemon], web.Application], log: Any = None) -> int:
    """Run jobd until SIGTERM/SIGINT; returns the process exit code. `make_app` is the HTTP
    surface over the daemon (jobd.web.create_app; the web layer sits above this module).

    This owns the process: its signals, its systemd variables (taken out of os.environ, so that
    nothing jobd starts inherits them) and, once a stop begins, a hard deadline after which it
    exits whatever is stuck (a Python handler ignoring its cancellation, a thread that never
    returns). Everything accepted is in the store by then, or recovered at the next start.
    """
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
    for problem in host_problems(config, prepare_cgroups=True):  # user or limits this host cannot honour: never silent
        daemon.log.warning("job_confinement", problem=problem)
    app = make_app(daemon)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    loop = asyncio.get_running_loop()
    signals = _Signals(daemon, _StopDeadline(daemon))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.stop, signum.name)
    loop.add_signal_handler(signal.SIGHUP, signals.reload)
    reloads: asyncio.Task[None] | None = None
    try:
        sockets = listen_sockets(daemon.environ)
        if not config.auth.enabled:
            _refuse_open_sockets(sockets)  # before anything starts
        await runner.setup()
        where = await _listen(runner, sockets, config)
        daemon.log.info("jobd_listening", url=where, addresses=[list(a)[:2] for a in runner.addresses])
        if daemon.cluster is not None:
            await daemon.cluster.life.advertise(runner.addresses)
        daemon.notifier.ready(daemon.status_line())
        reloads = asyncio.create_task(signals.reloads(), name="reloads")
        tune_gc()
        await daemon.stop_requested.wait()
        await daemon.drain()
    finally:
        if reloads is not None:
            reloads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloads
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path once start-up is over: what start-up made
    lives as long as the process and is moved out of the collector's sight, and collections come
    less often. See docs/performance.md (the gc.freeze() row of "The shortcuts")."""
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


__all__ = ["raise_open_files_limit", "serve", "tune_gc"]
