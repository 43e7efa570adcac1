"""A job's rules applied to a run's outcome as its worker ends it: failures its retry filters do
not retry, and successes shorter than `min_duration_s` (see docs/scheduling.md)."""

from __future__ import annotations

from typing import Protocol

from jobd.config import JobConfig
from jobd.config.runrules import TOO_SHORT
from jobd.models import Run, RunStatus


class Outcome(Protocol):
    @property
    def error(self) -> str | None: ...

    @property
    def exit_code(self) -> int | None: ...

    @property
    def raised(self) -> BaseException | None: ...


def judge(job: JobConfig, run: Run, status: RunStatus, outcome: Outcome, *, now: int) -> tuple[RunStatus, str | None]:
    """The status and error a run is ended with. A failure the job's filters do not retry is made
    its last attempt (`run.max_attempts`, which the retry decision reads); a success faster than
    `min_duration_s` ends PARTIAL with a `too short: …` error."""
    rules = job.rules
    if status is RunStatus.FAILED:
        if run.attempt < run.max_attempts and not rules.retryable(outcome.exit_code, outcome.raised):
            run.max_attempts = run.attempt
            return status, f"{outcome.error or 'failed'}; not retried ({_why_not(job, outcome)})"
        return status, outcome.error
    if rules.min_duration_s is not None and run.started_at is not None:
        took_ms = now - run.started_at
        if took_ms < rules.min_duration_s * 1000:
            return RunStatus.PARTIAL, f"{TOO_SHORT}ran {took_ms / 1000:g}s, min_duration_s {rules.min_duration_s:g}"
    return status, outcome.error


def _why_not(job: JobConfig, outcome: Outcome) -> str:
    rules = job.rules
    code = "no exit code" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
    if rules.retry_on_exit_codes is not None and outcome.exit_code not in rules.retry_on_exit_codes:
        return f"{code} is not in retry_on_exit_codes"
    if outcome.exit_code is not None and outcome.exit_code in rules.no_retry_on_exit_codes:
        return f"{code} is in no_retry_on_exit_codes"
    raised = "no exception" if outcome.raised is None else type(outcome.raised).__name__
    return f"{raised} is not in retry_on_exceptions"
