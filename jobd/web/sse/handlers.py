"""The stream endpoints: one run's events (also `GET /runs/{id}` with `Accept: text/event-stream`)
and the firehose of every run. Both are `serve` with what they follow bound to it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable

from aiohttp import ClientResponse, web
from aiohttp.abc import AbstractStreamWriter

from jobd.errors import JobdError
from jobd.events import SubscriberOverflow, SubscriptionClosed, encode_frame
from jobd.summary import RunStates
from jobd.web.auth import requires
from jobd.web.keys import DAEMON, REQUEST_ID
from jobd.web.params import PREFIX, run_id_of
from jobd.web.scope import job_names
from jobd.web.sse import frames, query
from jobd.web.sse.opening import NO_JOB, Opening, Selection, limited_filter, open_stream
from jobd.web.sse.relay import NODE_UNREACHABLE, RELAY, Relay
from jobd.web.sse.streams import INTERNAL, Stream, Streams

STREAMS: web.AppKey[Streams] = web.AppKey("streams", Streams)
RUN_STATES: web.AppKey[RunStates] = web.AppKey("run_states", RunStates)
Select = Callable[[web.Request, Streams], Selection]

routes = web.RouteTableDef()


def run_selection(request: web.Request, streams: Streams) -> Selection:
    return Selection(run_id=run_id_of(request), wants_logs=query.flag(request, "log"))


def firehose_selection(request: web.Request, streams: Streams) -> Selection:
    jobs = query.names(request, "job")
    statuses = query.statuses(request)
    limited = job_names(request, request.app[DAEMON].runs.jobs)
    if limited is not None:
        # A token limited to some jobs: their events only, and no `summary` (it counts every job's runs).
        jobs = (jobs & frozenset(limited) if jobs else frozenset(limited)) or NO_JOB
        return Selection(None, query.flag(request, "log"), limited_filter(jobs, statuses), jobs, statuses, False)
    accepts = streams.firehose_filter(jobs, statuses)
    return Selection(None, query.flag(request, "log"), accepts, jobs, statuses)


async def _start(request: web.Request, stream: Stream) -> tuple[web.StreamResponse, AbstractStreamWriter]:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": request.get(REQUEST_ID, ""),
        }
    )
    writer = await response.prepare(request)
    assert writer is not None
    stream.start(response)
    # The headers are out: the dict of them would otherwise stay for as long as the stream.
    response.headers.clear()
    return response, writer


async def serve(request: web.Request, *, select: Select) -> web.StreamResponse:
    """An open stream, from subscribing to its end, in one coroutine: every frame of a handler
    chain lives as long as its stream, so the handlers are this function with `select` bound."""
    streams = request.app[STREAMS]
    daemon = request.app[DAEMON]
    stream = streams.open(request)
    other_logs: asyncio.Task[None] | None = None
    try:
        selection = select(request, streams)
        until_terminal = selection.until_terminal
        # A run's log lines are on the node executing it: its stream is relayed from there.
        relay = request.app[RELAY]
        run_id = selection.run_id if selection.wants_logs and relay.may_move(request) else None
        if run_id is not None and (node := await relay.follows_elsewhere(request, run_id)) is not None:
            upstream = await relay.connect_stream(request, node, run_id, query.last_event_id(request), moved=False)
            response, writer = await _start(request, stream)
            stream.send(frames.retry_hint(daemon.config.server.sse_retry_ms))
            await _relay(stream, writer, upstream, relay, node, moved=False)
            return response
        # The firehose's log lines of runs executed elsewhere come from the other nodes.
        relays_logs = selection.run_id is None and selection.wants_logs and relay.may_move(request)
        stream.sub = sub = selection.subscribe(daemon.bus)
        # Read with no await after subscribing: the lines before it, the events carry those after.
        early = None if selection.run_id is None else relay.lines_so_far(request, selection.run_id)
        opening = await open_stream(daemon, request.app[RUN_STATES], selection, sub, query.last_event_id(request))
        del selection
        if opening is None:
            return web.Response(status=204)
        if early:
            run = daemon.runs.active.get(run_id_of(request)) or await daemon.store.get_run(run_id_of(request))
            if run is not None:
                _open_with_lines(opening, early, run.id, run.job)
        response, writer = await _start(request, stream)
        try:
            data = frames.retry_hint(daemon.config.server.sse_retry_ms) + b"".join(opening.frames)
            stream.position, finished = opening.position, opening.finished
            del opening  # a firehose's may hold every active run's state
            stream.send(data)
            del data
            if finished:
                return response
            if relays_logs:
                other_logs = asyncio.create_task(relay.firehose_logs(request, stream), name="relay-firehose")
            if run_id is None:  # a stream that may move sees each event, its run's start among them
                stream.deliver_at_once(until_terminal=until_terminal)
            while True:
                if stream.behind():
                    await writer.drain()
                if stream.ending == "error":
                    return response
                try:
                    event = sub.poll()
                    while isinstance(event, asyncio.Future):
                        await event
                        event = sub.poll()
                except SubscriptionClosed:
                    if stream.ending == "shutdown":
                        stream.send(frames.shutdown(stream.position))
                    return response
                if event is None:  # poked
                    continue
                chunks = [event.frame]
                last = event
                done = until_terminal and frames.ends_run(event)
                started = event.status == "PROCESSING"
                while not done and (more := sub.get_nowait()) is not None:
                    chunks.append(more.frame)
                    last = more
                    done = until_terminal and frames.ends_run(more)
                    started = started or more.status == "PROCESSING"
                if run_id is not None and (started or done):
                    # Where the run started: here, this node's bus has its log lines; elsewhere,
                    # the rest of the stream comes from there, from this position on (also for a
                    # run already over, whose start and end came together: its lines are there).
                    node = await relay.follows_elsewhere(request, run_id, ended=done)
                    moved_to: ClientResponse | None = None
                    if node is not None:
                        try:
                            moved_to = await relay.connect_stream(request, node, run_id, stream.position, moved=True)
                        except JobdError as exc:
                            if not done:
                                stream.fail(NODE_UNREACHABLE, f"{exc.detail}; reconnect with Last-Event-ID to resume")
                                return response
                            # Its node is gone (a run it was executing, failed by the others): the
                            # stream still ends with the run's final state, from here.
                    if moved_to is not None:
                        assert node is not None
                        sub.close()
                        await _relay(stream, writer, moved_to, relay, node, moved=True)
                        return response
                    run_id = None
                stream.send(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                stream.position = last.id
                del chunks
                if done:
                    return response
        except SubscriberOverflow:
            streams.cut_off(stream, "fell behind the events and was cut off")
        except ConnectionError:
            stream.end("gone")
        except Exception:
            # The headers are out: the middleware's problem+json is too late, the stream says it instead.
            streams.log.exception("stream_failed", path=request.path)
            stream.fail(INTERNAL, "the stream failed on the server; reconnect with Last-Event-ID to resume")
        return response
    finally:
        if other_logs is not None:
            other_logs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await other_logs
        streams.close(stream)


def _open_with_lines(opening: Opening, lines: list[tuple[str, str]], run_id: int, job: str) -> None:
    """A moved stream's opening: its run's states, then every line so far (not the few of them
    the replay may hold), each as the log message it would have had; a finished run's final
    state last."""
    kept = [frame for frame in opening.frames if b'"type":"log"' not in frame[:64]]
    said = [
        encode_frame(opening.position, {"type": "log", "run_id": run_id, "job": job, "stream": s, "line": line})
        for s, line in lines
    ]
    at = len(kept) - 1 if opening.finished else len(kept)  # before a finished run's final state
    opening.frames = kept[:at] + said + kept[at:]


async def _relay(
    stream: Stream, writer: AbstractStreamWriter, upstream: ClientResponse, relay: Relay, node: str, *, moved: bool
) -> None:
    await relay.pipe(stream, writer, upstream, node, moved=moved)
    if stream.ending == "shutdown":
        stream.send(frames.shutdown(stream.position))


# One run: connected, its current state, every change; ends after the terminal state.
run_events = requires("read")(functools.partial(serve, select=run_selection))
routes.get(PREFIX + "/runs/{run_id}/events", allow_head=False)(run_events)
# Every run's events, filtered by `job` and `status`, plus `summary` and `fire_skipped` messages.
firehose = requires("admin")(functools.partial(serve, select=firehose_selection))
routes.get(PREFIX + "/events", allow_head=False)(firehose)
