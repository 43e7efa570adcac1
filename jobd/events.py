"""The in-memory event bus: global ids, a replay ring, bounded subscribers.

Every event is encoded to its Server-Sent Events frame at most once, when a stream first needs
it; subscribers hold references to the same bytes. Publishing never awaits: each subscriber has a bounded buffer, a
progress-only update replaces the one still waiting for the same run (latest wins), and a
subscriber that is still full is cut off rather than allowed to grow or slow the others.

A subscriber can also have a `sink`: while nothing is queued for it, each event is first offered
to the sink, which may take it at once (the SSE layer writes it to a client that keeps up, with no
task to wake); what the sink refuses is queued as usual, so the order never changes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from jobd.models import compact_json


class Event:
    """One published event. Its SSE frame is encoded when first asked for, then kept: once per
    event at most, and not at all for an event no stream takes (and none replays)."""

    __slots__ = ("_frame", "coalescible", "data", "fed", "id", "job", "run_id", "status", "type")

    def __init__(
        self,
        id: int,
        type: str,
        run_id: int | None,
        job: str | None,
        status: str | None,
        data: dict[str, Any],
        coalescible: bool = False,
        fed: bool = False,
    ) -> None:
        self.id = id
        self.type = type
        self.run_id = run_id
        self.job = job
        self.status = status
        self.data = data
        # A progress-only update: a later one for the same run makes this one redundant.
        self.coalescible = coalescible
        # Its id came from a shared feed (cluster mode) rather than from this bus.
        self.fed = fed
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = encode_frame(self.id, self.data)
        return self._frame

    def __repr__(self) -> str:
        return f"Event({self.id}, {self.type!r}, run_id={self.run_id})"


class SubscriberOverflow(Exception):
    """The subscriber fell too far behind and was disconnected."""


class SubscriptionClosed(Exception):
    """The bus was shut down or the subscription closed."""


# A consumer waiting in get() has taken everything before; what is published before it gets to
# run again is one burst (a batch trigger, the finishes of one group commit), not lag. Such a burst
# may exceed the buffer up to this many times before the subscriber is cut off.
BURST_FACTOR = 10


def encode_frame(event_id: int | None, data: dict[str, Any]) -> bytes:
    body = compact_json(data)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {body}\n\n".encode()


class Subscriber:
    """One consumer's bounded view of the bus."""

    __slots__ = (
        "_by_run",
        "_entries",
        "_live",
        "_poked",
        "_waiter",
        "accepts",
        "bus",
        "capacity",
        "closed",
        "floor",
        "overflowed",
        "run_id",
        "sink",
        "wants_logs",
    )

    def __init__(
        self,
        bus: EventBus,
        *,
        run_id: int | None,
        accepts: Callable[[Event], bool] | None,
        capacity: int,
        wants_logs: bool,
    ) -> None:
        self.bus = bus
        self.run_id = run_id
        self.accepts = accepts
        self.capacity = capacity
        self.wants_logs = wants_logs
        # Entries are one-item lists so a coalesced event can be blanked in place. The deque is
        # made when first needed: most subscribers never queue anything (see `sink`).
        self._entries: deque[list[Event | None]] | None = None
        self._live = 0
        self._by_run: dict[int, list[Event | None]] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._poked = False
        self.overflowed = False
        self.closed = False
        self.sink: Callable[[Event], bool] | None = None
        self.floor = 0  # fed events up to this id are already the client's (see `resume_after`)

    def resume_after(self, event_id: int) -> None:
        """The client already has every fed event up to `event_id` (a stream's opening replayed
        them, or described the state they led to): drop those queued meanwhile, and those still
        to come (a node behind the one the client came from publishes them later)."""
        self.floor = event_id
        for entry in self._entries or ():
            event = entry[0]
            if event is not None and event.fed and event.id <= event_id:
                entry[0] = None
                self._live -= 1
                if event.run_id is not None and self._by_run.get(event.run_id) is entry:
                    del self._by_run[event.run_id]

    def offer(self, event: Event) -> bool:
        """Queue an event without waiting; False when this subscriber has to be cut off."""
        if self.closed or (event.fed and event.id <= self.floor):
            return True
        if self.sink is not None and not self._live and self.sink(event):
            return True
        if event.coalescible and event.run_id is not None:
            stale = self._by_run.get(event.run_id)
            if stale is not None and stale[0] is not None:
                stale[0] = None
                self._live -= 1
        if self._live >= self.capacity and (self._waiter is None or self._live >= BURST_FACTOR * self.capacity):
            self.overflowed = True
            self._entries = None
            self._by_run.clear()
            self._live = 0
            self._wake()
            return False
        entry: list[Event | None] = [event]
        if self._entries is None:
            self._entries = deque()
        self._entries.append(entry)
        self._live += 1
        if event.run_id is not None:
            if event.coalescible:
                self._by_run[event.run_id] = entry
            else:
                self._by_run.pop(event.run_id, None)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def pending(self) -> int:
        return self._live

    def get_nowait(self) -> Event | None:
        while self._entries:
            entry = self._entries.popleft()
            event = entry[0]
            if event is None:
                continue
            self._live -= 1
            if event.run_id is not None and self._by_run.get(event.run_id) is entry:
                del self._by_run[event.run_id]
            return event
        return None

    def poll(self) -> Event | asyncio.Future[None] | None:
        """`get()` without a coroutine of its own: the next event, None when poked, or (nothing
        queued) a future to await before polling again. An open stream waits on it directly, so
        it holds one coroutine frame fewer for as long as it is open.

        Raises when cut off or closed (events queued before a close are still handed out first).
        """
        self._waiter = None  # the consumer is running again: whatever comes next is a new burst
        if self.overflowed:
            raise SubscriberOverflow()
        event = self.get_nowait()
        if event is not None:
            return event
        if self.closed:
            raise SubscriptionClosed()
        if self._poked:
            self._poked = False
            return None
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when `timeout` passes or `poke()` is called first.

        Raises when cut off or closed (events queued before a close are still handed out first).
        """
        try:
            while isinstance(polled := self.poll(), asyncio.Future):
                if timeout is None:
                    await polled
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            await polled
                    except TimeoutError:
                        return None
            return polled
        finally:
            self._waiter = None

    def poke(self) -> None:
        """Make a waiting (or the next) `get()` return None without an event.

        Lets one shared timer drive heartbeats for many subscribers instead of a timer each.
        """
        self._poked = True
        self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self._wake()


class EventBus:
    def __init__(
        self,
        *,
        ring_size: int = 10_000,
        subscriber_buffer: int = 1000,
        first_id: int = 1,
        shared_ids: bool = False,
        log: Any = None,
    ) -> None:
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._buffer = subscriber_buffer
        # The daemon seeds ids from the clock, so ids keep increasing across restarts and an id
        # from an earlier process is recognised as "before this ring" rather than "in the future".
        self._next_id = first_id
        # Ids from a shared feed (cluster mode): an event of this process alone (a log line, a
        # summary) takes none, and carries the last one, which a later fed event may otherwise own.
        self._shared_ids = shared_ids
        self._by_run: dict[int, set[Subscriber]] = {}
        # Firehose subscribers by (filter, wants_logs): streams opened with the same filters share
        # one function (see the SSE layer), so an event is tested once per group, not per stream.
        self._firehose: dict[tuple[Callable[[Event], bool] | None, bool], set[Subscriber]] = {}
        self._firehose_count = 0
        self._log_listeners: dict[int, int] = {}
        self._evicted_up_to = first_id - 1
        # In-process observers called on every publish (e.g. the firehose summary); must not block.
        self.listeners: list[Callable[[Event], None]] = []
        self.log = log or structlog.get_logger("jobd.events")
        self.published = 0
        self.dropped = 0
        self.closed = False

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    @property
    def subscriber_count(self) -> int:
        return self._firehose_count + sum(len(subs) for subs in self._by_run.values())

    @property
    def firehose_count(self) -> int:
        return self._firehose_count

    def subscribe(
        self,
        *,
        run_id: int | None = None,
        accepts: Callable[[Event], bool] | None = None,
        wants_logs: bool = False,
        capacity: int | None = None,
    ) -> Subscriber:
        """A run's events (run_id given) or every run's events (the firehose)."""
        sub = Subscriber(self, run_id=run_id, accepts=accepts, capacity=capacity or self._buffer, wants_logs=wants_logs)
        if self.closed:
            sub.closed = True
            return sub
        if run_id is None:
            self._firehose.setdefault((accepts, wants_logs), set()).add(sub)
            self._firehose_count += 1
        else:
            self._by_run.setdefault(run_id, set()).add(sub)
        if wants_logs and run_id is not None:
            self._log_listeners[run_id] = self._log_listeners.get(run_id, 0) + 1
        return sub

    def wants_logs(self, run_id: int) -> bool:
        """Whether anyone listens for this run's log lines (else they are not published)."""
        return run_id in self._log_listeners or any(wants for _, wants in self._firehose)

    def _remove(self, sub: Subscriber) -> None:
        if sub.run_id is None:
            key = (sub.accepts, sub.wants_logs)
            group = self._firehose.get(key)
            if group is not None and sub in group:
                group.remove(sub)
                self._firehose_count -= 1
                if not group:
                    del self._firehose[key]
            return
        subs = self._by_run.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_run[sub.run_id]
        if sub.wants_logs:
            left = self._log_listeners.get(sub.run_id, 0) - 1
            if left > 0:
                self._log_listeners[sub.run_id] = left
            else:
                self._log_listeners.pop(sub.run_id, None)

    def publish(
        self,
        type_: str,
        data: dict[str, Any],
        *,
        run_id: int | None = None,
        job: str | None = None,
        status: str | None = None,
        coalescible: bool = False,
        replayable: bool = True,
        event_id: int | None = None,
    ) -> Event:
        """Assign the next id, encode once, remember in the ring and hand to every subscriber.
        `event_id`: the id a shared feed gave the event (cluster mode), above every id before it."""
        fed = event_id is not None
        if event_id is None:
            event_id = self.last_id if self._shared_ids else self._next_id
        self._next_id = max(self._next_id, event_id + 1)
        payload = {"type": type_, **data}
        event = Event(event_id, type_, run_id, job, status, payload, coalescible, fed)
        if replayable:
            if len(self._ring) == self._ring.maxlen:
                self._evicted_up_to = self._ring[0].id
            self._ring.append(event)
        self.published += 1
        if run_id is not None and run_id in self._by_run:
            self._offer(
                event,
                [
                    sub
                    for sub in self._by_run[run_id]
                    if (type_ != "log" or sub.wants_logs) and (sub.accepts is None or sub.accepts(event))
                ],
            )
        for (accepts, wants_logs), group in list(self._firehose.items()):
            if type_ == "log" and not wants_logs:
                continue
            if accepts is not None and not accepts(event):
                continue
            self._offer(event, tuple(group))
        for listener in self.listeners:
            listener(event)
        return event

    def _offer(self, event: Event, targets: Sequence[Subscriber]) -> None:
        """Hand `event` to these subscribers (a copy of their set: one cut off leaves it meanwhile)."""
        for sub in targets:
            if not sub.offer(event):
                self.dropped += 1
                self.log.warning("subscriber_overflow", run_id=sub.run_id, capacity=sub.capacity)
                sub.close()
                sub.overflowed = True

    def since(self, last_id: int) -> list[Event] | None:
        """Events after `last_id` still in the ring; None when some of them have left it."""
        if last_id == self.last_id:
            return []
        if last_id > self.last_id or last_id < self._evicted_up_to:
            return None
        # Ids in the ring are increasing but not contiguous (non-replayable events skip it), and
        # with shared ids an event of this process repeats the one before it.
        return [event for event in self._ring if event.id > last_id]

    def close_all(self) -> None:
        """Shutdown: every subscriber is woken and told the stream is over."""
        self.closed = True
        for sub in [
            *(s for group in self._firehose.values() for s in group),
            *(s for subs in self._by_run.values() for s in subs),
        ]:
            sub.close()
