"""Server-Sent Events: one run's stream and the firehose of every run, fed from the event bus.

Wire format, so that a plain EventSource with `onmessage` works: the stream opens with a `retry:`
hint; every message is an `id:` line and a `data:` line holding one JSON object whose `type` says
what it is (connected, status_update, log, summary, fire_skipped, shutdown); no `event:` names;
comment lines are heartbeats.

A handler subscribes to the bus *before* it reads the current state, with no await in between,
so no event can fall between the snapshot (or the replay) and the live stream. Frames are
encoded once by the bus and written as they are. Idle streams cost no timer each: one ticker
pokes the streams that are due a heartbeat and reaps those whose client has gone, and one task
publishes the firehose summary for all of them.

Once a stream has sent its opening, events for a client that keeps up (nothing queued, little
unsent) are written by the publisher itself, straight to the connection, gathered per loop
iteration: one event to 10,000 streams is 10,000 socket writes of the same bytes, with no task to
wake for each. A client that falls behind gets its events through its queue and the stream's task
again, which waits for the connection to drain (and is cut off when the queue overflows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from jobd.errors import BadRequest, RunNotFound, Unavailable
from jobd.events import Event, Subscriber, SubscriberOverflow, SubscriptionClosed, encode_frame
from jobd.models import TERMINAL_STATUSES, Run, RunStatus
from jobd.runs import status_update
from jobd.web.auth import requires
from jobd.web.keys import DAEMON, REQUEST_ID
from jobd.web.params import PREFIX, list_param, run_id_of

if TYPE_CHECKING:
    from jobd.daemon import Daemon

HEARTBEAT = b": ping\n\n"


def _chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk, as aiohttp's writer frames what a chunked response writes."""
    return b"%x\r\n%b\r\n" % (len(data), data)


HEARTBEAT_CHUNK = _chunk(HEARTBEAT)
TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
RUN_TYPES = frozenset({"status_update", "log"})
FIREHOSE_TYPES = frozenset({"status_update", "log", "summary", "fire_skipped"})
# How long a closing stream may take to say goodbye before its connection is cut.
SHUTDOWN_TIMEOUT_S = 2.0
NOTHING: frozenset[str] = frozenset()  # one empty filter for every stream that has none
# Unsent bytes beyond which a client counts as behind: its events then wait in its queue.
DIRECT_LIMIT = 64 * 1024

routes = web.RouteTableDef()


class Stream:
    """One open SSE response, as the registry sees it."""

    __slots__ = (
        "_batch",
        "_batch_bytes",
        "_chunked",
        "_registry",
        "_transport",
        "_until_terminal",
        "ending",
        "last_write",
        "position",
        "request",
        "sub",
        "writing_since",
    )

    def __init__(self, request: web.Request, now: float, registry: Streams | None = None) -> None:
        self.request = request
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self.sub: Subscriber | None = None
        # The id of the last message this client has: what `shutdown` carries.
        self.position = 0
        self.last_write = now
        self.writing_since: float | None = None
        self.ending: str | None = None  # "shutdown" or "gone" once the registry ends it
        self._chunked = False
        self._until_terminal = False
        self._batch: list[Event] = []  # taken by the sink, written at the end of this loop iteration
        self._batch_bytes = 0

    def write_directly(self, *, chunked: bool, until_terminal: bool) -> None:
        """From now on (the opening is out) events for a client that keeps up bypass the queue."""
        assert self.sub is not None and self._registry is not None
        transport = self.request.transport
        if not isinstance(transport, asyncio.Transport):
            return
        self._transport = transport
        # aiohttp frames an HTTP/1.1 stream in chunks; its direct writes must be framed the same.
        self._chunked = chunked
        self._until_terminal = until_terminal
        self.sub.sink = self._take

    def _take(self, event: Event) -> bool:
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or self.ending is not None
            or self.writing_since is not None
            or (self._until_terminal and _ends_run(event))  # the stream's task sends that one and ends
            or transport.get_write_buffer_size() + self._batch_bytes > DIRECT_LIMIT
        ):
            return False
        if not self._batch:
            assert self._registry is not None
            self._registry.to_flush(self)
        self._batch.append(event)
        self._batch_bytes += len(event.frame)
        return True

    def flush(self, now: float) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        transport = self._transport
        if not batch or transport is None or transport.is_closing():
            return
        if len(batch) == 1:  # the usual case, the same bytes for every stream (see Streams.framed)
            assert self._registry is not None
            transport.write(self._registry.framed(batch[0], self._chunked))
        else:
            transport.write(
                _chunk(b"".join(event.frame for event in batch))
                if self._chunked
                else b"".join(event.frame for event in batch)
            )
        self.position = batch[-1].id
        self.last_write = now

    def detach(self) -> None:
        """The response is ending: what the publisher took is written, and nothing after it (a
        keep-alive connection goes on to the client's next request)."""
        if self._batch:
            self.flush(asyncio.get_running_loop().time())
        self._transport = None
        if self.sub is not None:
            self.sub.sink = None

    def heartbeat(self, now: float) -> None:
        """Written at once to a client that keeps up; otherwise the stream's task sends it in turn."""
        transport = self._transport
        if self.sub is None:
            return
        if (
            transport is None
            or transport.is_closing()
            or self.sub.pending()
            or self._batch
            or self.writing_since is not None
            or self.ending is not None
            or transport.get_write_buffer_size() > DIRECT_LIMIT
        ):
            self.sub.poke()
            return
        transport.write(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT)
        self.last_write = now

    def end(self, reason: str) -> None:
        if self.ending is None:
            self.ending = reason
        if self.sub is not None:
            self.sub.close()

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def write(self, data: bytes, response: web.StreamResponse) -> None:
        loop = asyncio.get_running_loop()
        self.writing_since = loop.time()
        try:
            await response.write(data)
        finally:
            self.writing_since = None
        self.last_write = loop.time()


class Streams:
    """Every open stream: the limit, the shared heartbeat and reaper, and closing on shutdown."""

    def __init__(self, *, max_streams: int, heartbeat_s: float, log: Any = None) -> None:
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self.log = log or structlog.get_logger("jobd.sse")
        self.closing = False
        self._open: set[Stream] = set()
        self._unflushed: list[Stream] = []
        self._last_chunk: tuple[Event | None, bytes] = (None, b"")
        self._filters: weakref.WeakValueDictionary[tuple[frozenset[str], frozenset[str]], Callable[[Event], bool]] = (
            weakref.WeakValueDictionary()
        )
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, request: web.Request) -> Stream:
        if self.closing:
            raise Unavailable("jobd is shutting down; reconnect to the next instance", retry_after_s=2)
        if len(self._open) >= self.max_streams:
            raise Unavailable(
                f"too many open streams (server.max_streams = {self.max_streams})",
                retry_after_s=5,
                max_streams=self.max_streams,
            )
        stream = Stream(request, asyncio.get_running_loop().time(), self)
        self._open.add(stream)
        self._nonempty.set()
        self._empty.clear()
        return stream

    def firehose_filter(self, jobs: frozenset[str], statuses: frozenset[str]) -> Callable[[Event], bool]:
        """What a firehose with these `job` and `status` filters takes: one function (and one copy of
        its sets) for all the streams open with the same filters, rather than ~0.6 KB each."""
        key = (jobs, statuses)
        accepts = self._filters.get(key)
        if accepts is None:
            accepts = self._filters[key] = _firehose_filter(jobs, statuses)
        return accepts

    def framed(self, event: Event, chunked: bool) -> bytes:
        """The bytes that carry one event on a stream: every stream it goes to gets the same object."""
        if not chunked:
            return event.frame
        if self._last_chunk[0] is not event:
            self._last_chunk = (event, _chunk(event.frame))
        return self._last_chunk[1]

    def to_flush(self, stream: Stream) -> None:
        """`stream` has events for its connection: written, with every other's, once the publisher is done."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unflushed.append(stream)

    def _flush(self) -> None:
        streams, self._unflushed = self._unflushed, []
        now = asyncio.get_running_loop().time()
        for stream in streams:
            stream.flush(now)

    def close(self, stream: Stream) -> None:
        self._open.discard(stream)
        if stream.sub is not None:
            stream.sub.close()
        if not self._open:
            self._nonempty.clear()
            self._empty.set()

    def tick(self, now: float) -> None:
        """Heartbeats for idle streams; streams whose client left, or that stopped draining, end."""
        stuck_after = max(2 * self.heartbeat_s, 5.0)
        for stream in list(self._open):
            if stream.request.transport is None:
                stream.end("gone")
            elif stream.writing_since is not None:
                # A writer blocked on a client that stopped reading: cut off by the bus, closed,
                # or just stuck. Aborting the connection fails the write and frees the handler.
                if (stream.sub is not None and stream.sub.closed) or now - stream.writing_since >= stuck_after:
                    self.log.warning("stream_cut_off", path=stream.request.path, reason="client not reading")
                    stream.abort()
            elif now - stream.last_write >= self.heartbeat_s:
                stream.heartbeat(now)

    async def run_ticker(self) -> None:
        period = min(self.heartbeat_s, 1.0)
        loop = asyncio.get_running_loop()
        while True:
            await self._nonempty.wait()
            await asyncio.sleep(period)
            self.tick(loop.time())

    async def close_all(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Shutdown: every stream gets `shutdown` and ends; ones that cannot are cut."""
        self.closing = True
        count = len(self._open)
        for stream in list(self._open):
            stream.end("shutdown")
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            for stream in list(self._open):
                stream.abort()
        if count:
            self.log.info("streams_closed", count=count)


STREAMS: web.AppKey[Streams] = web.AppKey("streams", Streams)


# -- parsing the request ---------------------------------------------------------------------------


def wants_stream(request: web.Request) -> bool:
    """`GET /runs/{id}` asked for an event stream rather than JSON."""
    return request.method == "GET" and "text/event-stream" in request.headers.get("Accept", "")


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def last_event_id(request: web.Request) -> int | None:
    """Last-Event-ID (or `?last_event_id=` for clients that cannot set headers); junk is ignored."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    raw = raw.strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 20 else None  # "²" is a digit to isdigit()


def _names(request: web.Request, name: str) -> frozenset[str]:
    values = list_param(request, name)
    return frozenset(values) if values else NOTHING


def _statuses(request: web.Request) -> frozenset[str]:
    values = [value.upper() for value in list_param(request, "status")]
    allowed = {status.value for status in RunStatus}
    for value in values:
        if value not in allowed:
            raise BadRequest(f"status must be one or more of {', '.join(sorted(allowed))}")
    return frozenset(values) if values else NOTHING


# -- frames ------------------------------------------------------------------------------------------


def connected_frame(event_id: int, run_id: int | None) -> bytes:
    return encode_frame(event_id, {"type": "connected", "run_id": run_id})


def snapshot_frame(event_id: int, run: Run) -> bytes:
    return encode_frame(event_id, {"type": "status_update", **status_update(run)})


def shutdown_frame(event_id: int) -> bytes:
    return encode_frame(event_id, {"type": "shutdown"})


def summary(daemon: Daemon) -> dict[str, Any]:
    """What the firehose's `summary` message says: queue counts, workers busy, totals by status."""
    snapshot = daemon.runs.queue_snapshot(daemon.pool.concurrency)
    return {
        "queue": {"pending": snapshot["pending"], "processing": snapshot["processing"]},
        "workers": snapshot["workers"],
        "counts": snapshot["counts"],
    }


def _ends_run(event: Event) -> bool:
    return event.type == "status_update" and event.status in TERMINAL and not event.coalescible


class RunStates:
    """The last published `status_update` of every active run: what a new stream starts from.

    A bus listener. The snapshot is then a real event (its own id, a committed state) rather than
    the in-memory run, which may be a step ahead of its commit.
    """

    def __init__(self) -> None:
        self.latest: dict[int, Event] = {}

    def __call__(self, event: Event) -> None:
        if event.type != "status_update" or event.run_id is None:
            return
        if event.status in TERMINAL:
            self.latest.pop(event.run_id, None)
        else:
            self.latest[event.run_id] = event

    def snapshot(self, run: Run, position: int) -> tuple[int, bytes]:
        """(id, frame) of the run's current state; runs with no event yet are described as of `position`."""
        event = self.latest.get(run.id)
        if event is not None:
            return event.id, event.frame
        return position, snapshot_frame(position, run)


RUN_STATES: web.AppKey[RunStates] = web.AppKey("run_states", RunStates)


# -- the handlers ------------------------------------------------------------------------------------


async def _start(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": request.get(REQUEST_ID, ""),
        }
    )
    await response.prepare(request)
    return response


async def _run_stream_opening(request: web.Request, stream: Stream) -> tuple[list[bytes], int, bool] | web.Response:
    """Subscribe to the run, then (opening frames, the id they bring the client to, finished);
    or the answer when there is nothing to stream."""
    daemon = request.app[DAEMON]
    run_id = run_id_of(request)
    wants_logs = _flag(request.query.get("log"))
    resume_from = last_event_id(request)
    bus = daemon.bus
    stream.sub = bus.subscribe(run_id=run_id, wants_logs=wants_logs)
    # Nothing awaits between the subscription and these reads: see the module docstring.
    position = bus.last_id
    replay = bus.since(resume_from) if resume_from is not None else None
    run = daemon.runs.active.get(run_id)
    finished = run is None
    if run is None:
        # Not active: finished or unknown. The one store read of this stream.
        run = await daemon.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
    opening: list[bytes]
    if replay is not None:
        events = [e for e in replay if e.type in RUN_TYPES and e.run_id == run_id and (wants_logs or e.type != "log")]
        if finished and not events:
            # The client already has the final state; 204 also stops EventSource reconnecting.
            return web.Response(status=204)
        assert resume_from is not None
        opening = [connected_frame(resume_from, run_id), *(e.frame for e in events)]
        if events:
            position = events[-1].id
            finished = finished or any(_ends_run(e) for e in events)
        else:
            position = resume_from
    elif finished:
        opening = [connected_frame(0, run_id), snapshot_frame(position, run)]
    else:
        snapshot_id, frame = request.app[RUN_STATES].snapshot(run, position)
        opening = [connected_frame(0, run_id), frame]
        position = snapshot_id
    if finished:
        stream.sub.close()
    return opening, position, finished


def _firehose_types(event: Event) -> bool:
    return event.type in FIREHOSE_TYPES


def _firehose_filter(jobs: frozenset[str], statuses: frozenset[str]) -> Callable[[Event], bool]:
    if not (jobs or statuses):
        return _firehose_types  # shared by every unfiltered stream: one closure fewer each

    def accepts(event: Event) -> bool:
        if event.type not in FIREHOSE_TYPES:
            return False
        if event.type == "summary":
            return True
        if event.type == "fire_skipped":  # about a job, not a run: there is no status to filter on
            return not jobs or event.job in jobs
        return (not jobs or event.job in jobs) and (not statuses or event.status in statuses)

    return accepts


def _firehose_opening(request: web.Request, stream: Stream) -> tuple[list[bytes], int]:
    """Subscribe to every run, then (opening frames, the id they bring the client to)."""
    daemon = request.app[DAEMON]
    jobs = _names(request, "job")
    statuses = _statuses(request)
    wants_logs = _flag(request.query.get("log"))
    resume_from = last_event_id(request)
    accepts = request.app[STREAMS].firehose_filter(jobs, statuses)
    bus = daemon.bus
    stream.sub = bus.subscribe(accepts=accepts, wants_logs=wants_logs)
    position = bus.last_id
    replay = bus.since(resume_from) if resume_from is not None else None
    if replay is not None:
        assert resume_from is not None
        opening = [
            connected_frame(resume_from, None),
            *(e.frame for e in replay if accepts(e) and (wants_logs or e.type != "log")),
        ]
    else:
        states = request.app[RUN_STATES]
        snapshots = sorted(
            states.snapshot(run, position)
            for run in daemon.runs.active.values()
            if (not jobs or run.job in jobs) and (not statuses or run.status.value in statuses)
        )
        opening = [connected_frame(0, None), *(frame for _, frame in snapshots)]
    opening.append(encode_frame(position, {"type": "summary", **summary(daemon)}))
    return opening, position


Opening = Callable[[web.Request, Stream], Awaitable["tuple[list[bytes], int, bool] | web.Response"]]


async def _stream(request: web.Request, *, opening: Opening, until_terminal: bool) -> web.StreamResponse:
    """An open stream, from subscribing to its end, in one coroutine: every frame of a handler
    chain lives as long as its stream, so the handlers are this function with their opening
    bound (functools.partial) and events are awaited on the subscriber's future directly."""
    streams = request.app[STREAMS]
    stream = streams.open(request)
    try:
        opened = await opening(request, stream)
        if isinstance(opened, web.Response):
            return opened
        frames, position, finished = opened
        del opened
        response = await _start(request)
        # The headers are on their way (serialized when prepared): the dict of them is ~0.8 KB
        # that would otherwise stay for as long as the stream.
        chunked = response.headers.get("Transfer-Encoding") == "chunked"
        response.headers.clear()
        try:
            retry = request.app[DAEMON].config.server.sse_retry_ms
            # The opening is let go of once written (a firehose's may hold every active run's state).
            data = f"retry: {retry}\n\n".encode() + b"".join(frames)
            del frames
            await stream.write(data, response)
            del data
            stream.position = position
            if finished:
                return response
            sub = stream.sub
            assert sub is not None
            stream.write_directly(chunked=chunked, until_terminal=until_terminal)
            try:
                while True:
                    try:
                        event = sub.poll()
                        while isinstance(event, asyncio.Future):
                            await event
                            event = sub.poll()
                    except SubscriptionClosed:
                        if stream.ending != "gone":
                            await stream.write(shutdown_frame(stream.position), response)
                        return response
                    if event is None:  # poked: a heartbeat is due
                        if stream.ending is None:
                            await stream.write(HEARTBEAT, response)
                        continue
                    chunks = [event.frame]
                    last = event
                    done = until_terminal and _ends_run(event)
                    while not done and (more := sub.get_nowait()) is not None:
                        chunks.append(more.frame)
                        last = more
                        done = until_terminal and _ends_run(more)
                    await stream.write(b"".join(chunks) if len(chunks) > 1 else chunks[0], response)
                    stream.position = last.id
                    del chunks
                    if done:
                        return response
            finally:
                stream.detach()
        except SubscriberOverflow:
            streams.log.warning("stream_cut_off", path=request.path, reason="subscriber buffer overflow")
            stream.abort()
        except ConnectionError:
            stream.ending = stream.ending or "gone"
        return response
    finally:
        streams.close(stream)


async def _firehose_opening_async(request: web.Request, stream: Stream) -> tuple[list[bytes], int, bool]:
    return (*_firehose_opening(request, stream), False)


# One run: connected, its current state, every change; ends after the terminal state.
run_events = requires("read")(functools.partial(_stream, opening=_run_stream_opening, until_terminal=True))
routes.get(PREFIX + "/runs/{run_id}/events", allow_head=False)(run_events)
# Every run's events, filtered by `job` and `status`, plus `summary` and `fire_skipped` messages.
firehose = requires("admin")(functools.partial(_stream, opening=_firehose_opening_async, until_terminal=False))
routes.get(PREFIX + "/events", allow_head=False)(firehose)


# -- the firehose summary ------------------------------------------------------------------------------


class SummaryPublisher:
    """The one task that publishes `summary` to the firehose when the figures change.

    At most once per `interval_s`; nothing is computed while no firehose stream is open. The
    event is not kept for replay: a reconnecting client gets a fresh summary anyway.
    """

    def __init__(self, daemon: Daemon, interval_s: float) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self._dirty = asyncio.Event()
        self.last: dict[str, Any] | None = None

    def _on_publish(self, event: Event) -> None:
        if event.type == "status_update" and not event.coalescible:
            self._dirty.set()

    async def run(self) -> None:
        bus = self.daemon.bus
        bus.listeners.append(self._on_publish)
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                if not bus.firehose_count:
                    self.last = None
                    continue
                data = summary(self.daemon)
                if data != self.last:
                    self.last = data
                    bus.publish("summary", data, replayable=False)
                await asyncio.sleep(self.interval_s)
        finally:
            bus.listeners.remove(self._on_publish)


# -- wiring ----------------------------------------------------------------------------------------------


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


__all__ = [
    "STREAMS",
    "Stream",
    "Streams",
    "SummaryPublisher",
    "firehose",
    "run_events",
    "setup",
    "summary",
    "wants_stream",
]
