"""Retries: the backoff before a failed run's next attempt, and the run that repeats it."""

from __future__ import annotations

import random

from jobd.config import JobConfig
from jobd.models import Run, RunStatus, TriggerSource

MAX_BACKOFF_S = 24 * 3600.0
# The error of a run that jobd stopped (or found still PROCESSING after a crash) before it ended.
INTERRUPTED = "interrupted: jobd stopped while the run was in progress"


def backoff_s(job: JobConfig, attempt: int, rng: random.Random) -> float:
    """How long the retry after failed attempt `attempt` waits: exponential, ±20 % jitter, at most a day."""
    base = job.retry_backoff_s * 2.0 ** (attempt - 1)
    return min(MAX_BACKOFF_S, base * rng.uniform(0.8, 1.2))


def retry_run(previous: Run, *, run_id: int, now: int, delay_s: float = 0) -> Run:
    """A new PENDING run repeating `previous` as its next attempt, waiting `delay_s` before it starts."""
    attempt = previous.attempt + 1
    return Run(
        id=run_id,
        job=previous.job,
        status=RunStatus.PENDING,
        triggered_by=TriggerSource.RETRY,
        created_at=now,
        updated_at=now,
        params=dict(previous.params),
        attempt=attempt,
        max_attempts=max(previous.max_attempts, attempt),
        scheduled_for=previous.scheduled_for,
        run_after=now + round(delay_s * 1000) if delay_s > 0 else None,
        retry_of=previous.id,
        # Still the same link of its chain: its end triggers the chain the failed attempt did not.
        parent_run_id=previous.parent_run_id,
        chain_depth=previous.chain_depth,
        priority=previous.priority,
    )


def retries_after_failure(run: Run, status: RunStatus, job: JobConfig | None) -> bool:
    """Whether a run ending in `status` gets another attempt (also while jobd shuts down: the retry
    is committed with the failure and runs after the restart)."""
    return status is RunStatus.FAILED and job is not None and run.attempt < run.max_attempts


def retries_after_interrupt(job: JobConfig | None) -> bool:
    """Whether a run stopped by a shutdown or found after a crash is re-queued (on_interrupt)."""
    return job is not None and job.on_interrupt == "retry"


def no_longer_configured(job: str) -> str:
    return f"job {job!r} is no longer configured"
