"""How every stream opens: subscribe, then replay from Last-Event-ID or describe the current state.

One path for the three stream endpoints. A stream follows a `Selection`: one run (until its
final state) or every run that passes the firehose's filters (with a `summary` at the end of the
opening). It subscribes to the bus *before* it reads the current state, so no event can fall
between the snapshot (or the replay) and the live stream.

From the ring the opening is read with no await after the subscription. In a cluster, a resume the
ring cannot answer is read from the events table, and events published meanwhile wait in the
subscription: the subscription drops those the opening already covers (`resume_after`), so none
comes twice. The same holds when the client comes from a node ahead of this one: what it already
has is dropped as this node catches up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from jobd.errors import RunNotFound
from jobd.events import Event, EventBus, Subscriber
from jobd.models import Run
from jobd.summary import RunStates, summary
from jobd.web.sse import frames
from jobd.web.sse.query import NOTHING

if TYPE_CHECKING:
    from jobd.app import Daemon


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """What a stream follows: one run (`run_id`), or every run the firehose's filters let through."""

    run_id: int | None
    wants_logs: bool
    accepts: Callable[[Event], bool] | None = None  # the firehose's filter, shared by its streams
    jobs: frozenset[str] = NOTHING
    statuses: frozenset[str] = NOTHING
    summaries: bool = True  # the firehose's `summary` messages (not for a token limited to some jobs)

    @property
    def until_terminal(self) -> bool:
        """A run's stream ends with the run; the firehose goes on."""
        return self.run_id is not None

    def subscribe(self, bus: EventBus) -> Subscriber:
        return bus.subscribe(run_id=self.run_id, accepts=self.accepts, wants_logs=self.wants_logs)

    def replays(self, event: Event) -> bool:
        if event.type == "log" and not self.wants_logs:
            return False
        if self.run_id is not None:
            return event.run_id == self.run_id and event.type in frames.RUN_TYPES
        return self.accepts is None or self.accepts(event)

    def shows(self, run: Run) -> bool:
        """Whether the firehose's opening describes this active run."""
        return (not self.jobs or run.job in self.jobs) and (not self.statuses or run.status.value in self.statuses)


NO_JOB = frozenset({""})  # a job filter no job passes (no job is named ""): an empty one passes all


def limited_filter(jobs: frozenset[str], statuses: frozenset[str]) -> Callable[[Event], bool]:
    """The firehose's filter for a token limited to `jobs`: their runs' events and fire_skipped, nothing else."""

    def accepts(event: Event) -> bool:
        if event.type not in frames.FIREHOSE_TYPES or event.job not in jobs:
            return False
        return event.type == "fire_skipped" or not statuses or event.status in statuses

    return accepts


@dataclasses.dataclass(frozen=True, slots=True)
class Replay:
    """The events after a client's Last-Event-ID (`after`), and the id that the stream has reached
    with them: everything up to it is in `events` or filtered out."""

    after: int
    events: list[Event]
    reached: int


@dataclasses.dataclass(slots=True)
class Opening:
    """The opening messages, the id of the last one (where the client then is), and whether the
    stream has nothing to follow after them (its run is over)."""

    frames: list[bytes]
    position: int
    finished: bool


async def open_stream(
    daemon: Daemon, states: RunStates, selection: Selection, sub: Subscriber, resume_from: int | None
) -> Opening | None:
    """The opening of a stream just subscribed to `selection` (`sub`), called at once after the
    subscription; None when a run's stream resumes after the run's end (204). RunNotFound for a run
    that does not exist."""
    bus = daemon.bus
    replay = None if resume_from is None else _from_ring(daemon, resume_from)
    if replay is None and resume_from is not None and daemon.cluster is not None:
        replay = await _from_table(daemon, resume_from)
    # No await between these reads and the subscription, or the replay: see the module docstring.
    last_id = bus.last_id
    sub.resume_after(last_id if replay is None else replay.reached)
    active = _active(daemon, selection)
    finished: Run | None = None
    if selection.run_id is not None and not active:
        # Not active: finished or unknown. The one store read of a stream.
        finished = await daemon.store.get_run(selection.run_id)
        if finished is None:
            raise RunNotFound(selection.run_id)
        if not finished.status.terminal:  # in a cluster: created by another node, not yet in this one's feed
            active, finished = [finished], None
    opening: list[tuple[int, bytes]]
    if replay is not None:
        events = [event for event in replay.events if selection.replays(event)]
        if finished is not None and not events:
            # The client already has the final state; 204 also stops EventSource reconnecting.
            return None
        opening = [(replay.after, frames.connected(replay.after, selection.run_id))]
        opening += [(event.id, event.frame) for event in events]
        ended = finished is not None or (selection.until_terminal and any(frames.ends_run(e) for e in events))
        last_id = replay.reached
        if finished is not None and not any(frames.ends_run(e) for e in events):
            # In a cluster the store may know of the end before this node's feed does.
            opening.append((last_id, frames.snapshot(last_id, finished)))
    else:
        opening = [(0, frames.connected(0, selection.run_id))]
        if finished is not None:
            opening.append((last_id, frames.snapshot(last_id, finished)))
        else:
            opening += sorted(_state(states, run, last_id) for run in active)
        ended = finished is not None
    if not selection.until_terminal and selection.summaries:
        opening.append((last_id, frames.summary(last_id, summary(daemon))))
    return Opening([frame for _, frame in opening], opening[-1][0], ended)


def _from_ring(daemon: Daemon, resume_from: int) -> Replay | None:
    """The replay from this node's ring, if it holds every event after `resume_from`."""
    after: int | None = resume_from
    if daemon.cluster is not None:
        after = daemon.cluster.tail.key(resume_from)
    events = None if after is None else daemon.bus.since(after)
    if events is None:
        return None
    assert after is not None
    return Replay(after, events, daemon.bus.last_id)


async def _from_table(daemon: Daemon, resume_from: int) -> Replay | None:
    """A cluster's replay from the events table: for an id from before this node's ring (or its
    start), from another node ahead of this one, or from an earlier jobd (a row id)."""
    assert daemon.cluster is not None
    resumed = await daemon.cluster.tail.resume(resume_from, daemon.config.events.ring_size)
    if resumed is None:
        return None
    after, events = resumed
    return Replay(after, events, events[-1].id if events else after)


def _active(daemon: Daemon, selection: Selection) -> list[Run]:
    if selection.run_id is not None:
        run = daemon.runs.active.get(selection.run_id)
        return [] if run is None else [run]
    return [run for run in daemon.runs.active.values() if selection.shows(run)]


def _state(states: RunStates, run: Run, position: int) -> tuple[int, bytes]:
    """(id, message) of an active run's state: its last published status_update, or, for a run
    with none yet, its state described as of `position`."""
    event = states.latest.get(run.id)
    if event is not None:
        return event.id, event.frame
    return position, frames.snapshot(position, run)
