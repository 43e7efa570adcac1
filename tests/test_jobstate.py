"""Job state: each kind of change, and what is handed to the store (a copy)."""

from __future__ import annotations

from jobd.lifecycle.jobstate import JobStates
from jobd.models import RunStatus
from jobd.store import JobState


def test_a_job_without_state_gets_a_fresh_one() -> None:
    states = JobStates({"a": JobState("a", paused=True)})
    assert states.of("a").paused and "b" not in states
    assert states.of("b") == JobState("b") and "b" in states and len(states) == 2
    states.replace_all({"c": JobState("c")})
    assert list(states) == ["c"]


def test_fires_skips_and_pauses() -> None:
    states = JobStates()
    written = states.fired("j", 1_000)
    assert written.last_fire_at == 1_000
    written.last_fire_at = 5  # a copy: the live state is not the one handed to the store
    assert states["j"].last_fire_at == 1_000
    skipped = states.skipped("j", 2_000)
    assert (skipped.skipped_fires, skipped.last_skipped_at) == (1, 2_000)
    assert states.skipped("j", 3_000).skipped_fires == 2
    assert states.paused("j", True).paused and states["j"].paused
    assert not states.paused("j", False).paused


def test_the_failure_streak_and_the_last_run() -> None:
    states = JobStates()
    assert states.run_ended("j", RunStatus.FAILED, newest_run_id=1) == 0
    assert states.run_ended("j", RunStatus.FAILED, newest_run_id=2) == 1
    # A cancellation leaves the streak be; a success ends it.
    assert states.run_ended("j", RunStatus.CANCELLED, newest_run_id=3) == 2
    assert states["j"].consecutive_failures == 2
    assert states.run_ended("j", RunStatus.PARTIAL, newest_run_id=4) == 2
    assert states["j"].consecutive_failures == 0 and states["j"].last_run_id == 4
    # A run that ends after a newer one was created does not move last_run_id back.
    states.run_ended("j", RunStatus.COMPLETED, newest_run_id=3)
    assert states["j"].last_run_id == 4
