"""Open streams: each one's writer, and the registry that limits, heartbeats, reaps and closes them.

`Stream.send` is the one place a stream's bytes reach its client: the opening, events, heartbeats
and the last message alike. The response's headers (and, at its end, the last chunk) are
aiohttp's; what lies between is written here, framed as aiohttp frames the response (chunks on
HTTP/1.1, bare on HTTP/1.0). Who calls it: the stream's task, except for an event published while
its client keeps up and nothing waits in its queue, which `Stream.take` sends at once.

Idle streams cost no timer each: one ticker writes the heartbeats that are due, and ends the
streams whose client has gone or stopped reading.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from aiohttp import web

from jobd.errors import Unavailable
from jobd.events import Event, Subscriber
from jobd.web.sse import frames
from jobd.web.sse.query import NOTHING

# How long a stream that is ending may take to say goodbye before its connection is cut.
FAREWELL_S = 2.0
# Unsent bytes beyond which a client counts as behind: the stream waits for it to read them.
BEHIND_BYTES = 64 * 1024

# The `reason` of an `error` message: the OpenAPI document lists them (ErrorMessage).
LAGGING = "lagging"
INTERNAL = "internal"


class Stream:
    """One open SSE response."""

    __slots__ = (
        "_chunked",
        "_transport",
        "_until_terminal",
        "behind_since",
        "ended_at",
        "ending",
        "last_write",
        "position",
        "request",
        "sub",
    )

    def __init__(self, request: web.Request, now: float) -> None:
        self.request = request
        self.sub: Subscriber | None = None
        self._transport: asyncio.Transport | None = None
        self._chunked = False
        # The id of the last message this client has: what `shutdown` and `error` carry.
        self.position = 0
        self.last_write = now
        self.behind_since: float | None = None  # since when its client has had much left unread
        self.ending: str | None = None  # "shutdown", "gone" or "error" once the stream is ending
        self.ended_at = 0.0
        self._until_terminal = False

    def start(self, response: web.StreamResponse) -> None:
        """The headers are out: from now on `send` writes to this connection."""
        transport = self.request.transport
        if isinstance(transport, asyncio.Transport):
            self._transport = transport
        # aiohttp chunks an HTTP/1.1 stream; what is sent here must be framed the same way.
        self._chunked = response.headers.get("Transfer-Encoding") == "chunked"

    def send(self, data: bytes) -> None:
        """Write `data` (whole SSE messages) to the client; raises ConnectionResetError once it has gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self.last_write = time.monotonic()

    def deliver_at_once(self, *, until_terminal: bool) -> None:
        """The opening is out: from now on events may be written as they are published (see `take`)."""
        assert self.sub is not None
        self._until_terminal = until_terminal
        self.sub.sink = self.take

    # Performance: see docs/performance.md (SSE: an event written as it is published)
    def take(self, event: Event) -> bool:
        """The bus offers `event` here while nothing is queued for this stream: written at once to a
        client that keeps up, rather than waking the stream's task for it."""
        if (
            self.ending is not None
            or (self._until_terminal and frames.ends_run(event))  # the task sends that one, and ends the stream
            or self.behind()
        ):
            return False
        try:
            self.send(event.frame)
        except ConnectionResetError:
            return False
        self.position = event.id
        return True

    def behind(self) -> bool:
        """Whether the client has much left to read: the stream then waits for it, and is not idle."""
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > BEHIND_BYTES

    def heartbeat(self) -> None:
        if self._transport is None:  # still opening
            return
        try:
            self.send(frames.HEARTBEAT)
        except ConnectionResetError:
            self.end("gone")

    def end(self, reason: str) -> None:
        if self.ending is None:
            self.ending = reason
            self.ended_at = time.monotonic()
        if self.sub is not None:
            self.sub.close()

    def fail(self, reason: str, message: str) -> None:
        """End the stream with an `error` message: after what the client already has, before the close."""
        if self.ending is not None:
            return
        self.end("error")
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self.send(frames.error(self.position, reason, message))

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class Streams:
    """Every open stream: the limit, the shared heartbeat and reaper, and closing on shutdown."""

    def __init__(self, *, max_streams: int, heartbeat_s: float, log: Any = None) -> None:
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self.log = log or structlog.get_logger("jobd.sse")
        self.closing = False
        self._open: set[Stream] = set()
        self._filters: weakref.WeakValueDictionary[tuple[frozenset[str], frozenset[str]], Callable[[Event], bool]] = (
            weakref.WeakValueDictionary()
        )
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._open))

    def open(self, request: web.Request) -> Stream:
        if self.closing:
            raise Unavailable("jobd is shutting down; reconnect to the next instance", retry_after_s=2)
        if len(self._open) >= self.max_streams:
            raise Unavailable(
                f"too many open streams (server.max_streams = {self.max_streams})",
                retry_after_s=5,
                max_streams=self.max_streams,
            )
        stream = Stream(request, time.monotonic())
        self._open.add(stream)
        self._nonempty.set()
        self._empty.clear()
        return stream

    def close(self, stream: Stream) -> None:
        self._open.discard(stream)
        if stream.sub is not None:
            stream.sub.close()
        if not self._open:
            self._nonempty.clear()
            self._empty.set()

    def firehose_filter(self, jobs: frozenset[str], statuses: frozenset[str]) -> Callable[[Event], bool]:
        """What a firehose with these `job` and `status` filters takes: one function (and one copy of
        its sets) for all the streams open with the same filters, rather than one each."""
        key = (jobs, statuses)
        accepts = self._filters.get(key)
        if accepts is None:
            accepts = self._filters[key] = _firehose_filter(jobs, statuses)
        return accepts

    def tick(self, now: float) -> None:
        """Heartbeats for idle streams; streams whose client left, or stopped reading, end."""
        stuck_after = max(2 * self.heartbeat_s, 5.0)
        for stream in list(self._open):
            if stream.request.transport is None:
                stream.end("gone")
            elif stream.ending is not None:
                if stream.behind() and now - stream.ended_at >= FAREWELL_S:
                    stream.abort()  # its client does not read its last message: the handler is freed
            elif stream.behind():
                since = stream.behind_since = stream.behind_since or now
                if stream.sub is not None and stream.sub.overflowed:
                    self.cut_off(stream, "fell behind the events and was cut off")
                elif now - since >= stuck_after:
                    self.cut_off(stream, "stopped reading and was cut off")
            else:
                stream.behind_since = None
                if now - stream.last_write >= self.heartbeat_s:
                    stream.heartbeat()

    def cut_off(self, stream: Stream, message: str) -> None:
        self.log.warning("stream_cut_off", path=stream.request.path, reason=message)
        stream.fail(LAGGING, f"the client {message}; reconnect with Last-Event-ID to resume")

    async def run_ticker(self) -> None:
        period = min(self.heartbeat_s, 1.0)
        while True:
            await self._nonempty.wait()
            await asyncio.sleep(period)
            self.tick(time.monotonic())

    async def close_all(self, timeout: float = FAREWELL_S) -> None:
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


def _firehose_types(event: Event) -> bool:
    return event.type in frames.FIREHOSE_TYPES


def _firehose_filter(jobs: frozenset[str], statuses: frozenset[str]) -> Callable[[Event], bool]:
    if not (jobs or statuses):
        return _firehose_types  # shared by every unfiltered stream

    def accepts(event: Event) -> bool:
        if event.type not in frames.FIREHOSE_TYPES:
            return False
        if event.type == "summary":
            return True
        if event.type == "fire_skipped":  # about a job, not a run: there is no status to filter on
            return not jobs or event.job in jobs
        return (not jobs or event.job in jobs) and (not statuses or event.status in statuses)

    return accepts


__all__ = ["NOTHING", "Stream", "Streams"]
