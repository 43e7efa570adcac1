"""Server-Sent Events: one run's stream and the firehose of every run, fed from the event bus.

Wire format, so that a plain EventSource with `onmessage` works: the stream opens with a `retry:`
hint; every message is an `id:` line and a `data:` line holding one JSON object whose `type` says
what it is (connected, status_update, log, summary, fire_skipped, shutdown, error); no `event:`
names; comment lines are heartbeats. A stream that ends for another reason than its run's end or
a shutdown (its client fell behind and was cut off, or it failed) says why in a last `error`
message: `{"type": "error", "message": ..., "reason": ...}`.

    query     what a stream request asks for
    opening   subscribing, then the replay or the current state: one path for every stream
    frames    the messages a stream makes itself
    streams   each stream's writer, and the registry: limit, heartbeats, reaping, shutdown
    handlers  the endpoints
    relay     in a cluster: a run's log and log lines from the node that executes it
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from jobd.summary import RunStates, SummaryPublisher
from jobd.web.sse.handlers import RUN_STATES, STREAMS, firehose, routes, run_events
from jobd.web.sse.query import wants_stream
from jobd.web.sse.streams import Stream, Streams

if TYPE_CHECKING:
    from jobd.app import Daemon


def setup(app: web.Application, daemon: Daemon) -> None:
    """Routes, the stream registry, its ticker, the summary task and closing streams on shutdown."""
    streams = Streams(
        max_streams=daemon.config.server.max_streams,
        heartbeat_s=daemon.config.server.sse_heartbeat_s,
        log=daemon.log.bind(component="sse"),
    )
    app[STREAMS] = streams
    states = app[RUN_STATES] = RunStates()
    daemon.bus.listeners.append(states)
    app.add_routes(routes)
    publisher = SummaryPublisher(daemon, daemon.config.events.summary_interval_s)

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(streams.run_ticker(), name="sse-ticker"),
            asyncio.create_task(publisher.run(), name="sse-summary"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_shutdown(app: web.Application) -> None:
        await streams.close_all()

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)


__all__ = ["RUN_STATES", "STREAMS", "Stream", "Streams", "firehose", "run_events", "setup", "wants_stream"]
