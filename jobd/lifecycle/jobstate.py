"""What jobd remembers of each job between runs and restarts: every change to a JobState is here.

The callers commit what these return (a copy, so that a later change cannot slip into a commit
already under way) and publish once committed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jobd.models import RunStatus, iso_ms
from jobd.store import JobState


class JobStates(Mapping[str, JobState]):
    """The states of all jobs, by name; a job without one gets a fresh one when first changed."""

    def __init__(self, states: Mapping[str, JobState] | None = None) -> None:
        self._states: dict[str, JobState] = dict(states or {})

    def __getitem__(self, name: str) -> JobState:
        return self._states[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def of(self, name: str) -> JobState:
        """The job's live state (created empty for a job that has none yet)."""
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = JobState(name)
        return state

    def replace_all(self, states: Mapping[str, JobState]) -> None:
        """The states read from the store at start."""
        self._states = dict(states)

    def fired(self, name: str, scheduled_for: int) -> JobState:
        """A cron fire for `scheduled_for` was made: the next start catches up from there."""
        state = self.of(name)
        state.last_fire_at = scheduled_for
        return state.copy()

    def skipped(self, name: str, at: int, reason: str = "overlap") -> JobState:
        """A fire refused by the overlap policy, or (`reason` "excluded") left out by the job's
        calendars or active period."""
        state = self.of(name)
        state.skipped_fires += 1
        state.last_skipped_at = at
        state.last_skip_reason = reason
        return state.copy()

    def excluded(self, name: str, scheduled_for: int, at: int) -> JobState:
        """A fire its calendars or active period leave out: counted as skipped, and fired (the next
        start does not catch it up)."""
        self.of(name).last_fire_at = scheduled_for
        return self.skipped(name, at, "excluded")

    def paused(self, name: str, paused: bool) -> JobState:
        state = self.of(name)
        state.paused = paused
        return state.copy()

    def run_ended(self, name: str, status: RunStatus, *, newest_run_id: int) -> int:
        """A run of the job reached `status`: its failure streak (a cancellation leaves it be) and
        last run. Returns the streak before this run."""
        state = self.of(name)
        previous = state.consecutive_failures
        if status is RunStatus.FAILED:
            state.consecutive_failures += 1
        elif status is not RunStatus.CANCELLED:
            state.consecutive_failures = 0
        state.last_run_id = max(newest_run_id, state.last_run_id or 0)  # a newer run may have started meanwhile
        return previous


def excluded_event(job: str, scheduled_for: int, now: int, skipped_fires: int, excluded_by: str) -> dict[str, Any]:
    """The `fire_skipped` message of a fire the job's calendars or active period left out: the
    overlap skip's fields, with `skip_reason` "excluded" and what excluded it."""
    return {
        "job": job,
        "scheduled_for": iso_ms(scheduled_for),
        "skipped_at": iso_ms(now),
        "skipped_fires": skipped_fires,
        "active_run_ids": [],
        "reason": f"excluded ({excluded_by})",
        "skip_reason": "excluded",
        "excluded_by": excluded_by,
    }
