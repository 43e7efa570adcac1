"""Retries: backoff with jitter, the run that repeats a failed one, and when there is one."""

from __future__ import annotations

import random

import pytest

from jobd.config import JobConfig, parse_config
from jobd.lifecycle.retry import (
    backoff_s,
    no_longer_configured,
    retries_after_failure,
    retries_after_interrupt,
    retry_run,
)
from jobd.models import Run, RunStatus, TriggerSource


def job(**options: object) -> JobConfig:
    return parse_config({"jobs": {"j": {"command": ["true"], **options}}}, environ={}).jobs["j"]


def test_backoff_doubles_with_jitter_and_is_capped_at_a_day() -> None:
    flaky = job(retries=2, retry_backoff_s=0.2)
    rng = random.Random(7)
    waits = [backoff_s(flaky, 1, rng) for _ in range(200)]
    assert 0.16 <= min(waits) < 0.18 and 0.22 < max(waits) <= 0.24
    seconds = [backoff_s(flaky, 2, rng) for _ in range(200)]
    assert min(seconds) >= 0.32 and max(seconds) <= 0.48
    assert backoff_s(flaky, 40, rng) == 86400


def test_the_retry_repeats_the_run_as_its_next_attempt() -> None:
    failed = Run(
        id=5,
        job="j",
        status=RunStatus.FAILED,
        triggered_by=TriggerSource.CRON,
        created_at=1_000,
        params={"a": [1]},
        attempt=1,
        max_attempts=3,
        scheduled_for=900,
        error="boom",
    )
    again = retry_run(failed, run_id=6, now=2_000, delay_s=1.5)
    assert (again.id, again.status, again.triggered_by) == (6, RunStatus.PENDING, TriggerSource.RETRY)
    assert (again.attempt, again.max_attempts, again.retry_of) == (2, 3, 5)
    assert (again.created_at, again.run_after, again.scheduled_for) == (2_000, 3_500, 900)
    assert again.params == {"a": [1]} and again.params is not failed.params and again.error is None
    # No delay: it may start at once. An operator's retry past the last attempt raises the limit.
    last = retry_run(again, run_id=7, now=2_000)
    assert last.run_after is None and (last.attempt, last.max_attempts) == (3, 3)
    assert retry_run(last, run_id=8, now=2_000).max_attempts == 4


@pytest.mark.parametrize(
    "status, attempt, configured, expected",
    [
        (RunStatus.FAILED, 1, True, True),
        (RunStatus.FAILED, 3, True, False),  # attempts used up
        (RunStatus.FAILED, 1, False, False),  # the job is gone
        (RunStatus.COMPLETED, 1, True, False),
        (RunStatus.CANCELLED, 1, True, False),
        (RunStatus.PARTIAL, 1, True, False),
    ],
)
def test_which_endings_are_retried(status: RunStatus, attempt: int, configured: bool, expected: bool) -> None:
    run = Run(id=1, job="j", status=RunStatus.PROCESSING, triggered_by=TriggerSource.API, created_at=0)
    run.attempt, run.max_attempts = attempt, 3
    assert retries_after_failure(run, status, job(retries=2) if configured else None) is expected


def test_interrupted_runs_follow_on_interrupt() -> None:
    assert retries_after_interrupt(job(on_interrupt="retry"))
    assert not retries_after_interrupt(job(on_interrupt="fail"))
    assert not retries_after_interrupt(None)
    assert no_longer_configured("j") == "job 'j' is no longer configured"
