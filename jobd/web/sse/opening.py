"""How every stream opens: subscribe, then replay from Last-Event-ID or describe the current state.

One path for the three stream endpoints. A stream follows a `Selection`: one run (until its
final state) or every run that passes the firehose's filters (with a `summary` at the end of the
opening). It subscribes to the bus *before* it reads the current state, with no await in between,
so no event can fall between the snapshot (or the replay) and the live stream.
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


@dataclasses.dataclass(slots=True)
class Opening:
    """The opening messages, the id of the last one (where the client then is), and whether the
    stream has nothing to follow after them (its run is over)."""

    frames: list[bytes]
    position: int
    finished: bool


async def open_stream(
    daemon: Daemon, states: RunStates, selection: Selection, resume_from: int | None
) -> Opening | None:
    """The opening of a stream just subscribed to `selection`, called at once after the subscription;
    None when a run's stream resumes after the run's end (204). RunNotFound for a run that does not exist."""
    bus = daemon.bus
    # Nothing awaits between the subscription and these reads: see the module docstring.
    last_id = bus.last_id
    replay = bus.since(resume_from) if resume_from is not None else None
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
        assert resume_from is not None
        events = [event for event in replay if selection.replays(event)]
        if finished is not None and not events:
            # The client already has the final state; 204 also stops EventSource reconnecting.
            return None
        opening = [(resume_from, frames.connected(resume_from, selection.run_id))]
        opening += [(event.id, event.frame) for event in events]
        ended = finished is not None or (selection.until_terminal and any(frames.ends_run(e) for e in events))
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
    if not selection.until_terminal:
        opening.append((last_id, frames.summary(last_id, summary(daemon))))
    return Opening([frame for _, frame in opening], opening[-1][0], ended)


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
