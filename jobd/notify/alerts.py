"""`[alerts]` as a notifier with a threshold: the `alerts` webhook notifier the config makes of
`[alerts] webhook_url` gets a failure message when a job's streak of failed runs reaches its
`alert_after_failures` (once per streak), and a recovery message at the first success after it.

The messages keep the payload `[alerts]` has always posted (`kind`, `job`, `run_id`, ...), not the
notifiers' event; they are queued, retried and recorded like every other notification.
"""

from __future__ import annotations

from typing import Any

from jobd.config import JobConfig
from jobd.config.notifiers import ALERTS_NOTIFIER
from jobd.models import Run, RunStatus
from jobd.store.notifications import NewNotification

SUCCESS_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.PARTIAL})
MAX_TEXT_ERROR = 300


def message(job: JobConfig, run: Run, previous_failures: int) -> dict[str, Any] | None:
    """The alert a run's end makes, if any. `previous_failures`: the job's streak before the run.

    Every FAILED run counts, an attempt that is retried too; a cancellation neither counts nor
    ends the streak."""
    threshold = job.alert_after_failures
    if run.status in SUCCESS_STATUSES:
        if previous_failures < threshold:
            return None
        status = run.status.value.lower()
        return {
            "kind": "recovery",
            "job": job.name,
            "run_id": run.id,
            "status": status,
            "previous_failures": previous_failures,
            "text": f"jobd: job {job.name!r} recovered (run {run.id} {status})",
        }
    consecutive_failures = previous_failures + 1
    # Only the run that reaches the threshold alerts; later failures of the same streak do not.
    if run.status is not RunStatus.FAILED or consecutive_failures != threshold:
        return None
    if consecutive_failures == 1:
        text = f"jobd: job {job.name!r} failed ({describe_failure(run)})"
    else:
        text = f"jobd: job {job.name!r} failed {consecutive_failures} times in a row (last: {describe_failure(run)})"
    return {
        "kind": "failure",
        "job": job.name,
        "run_id": run.id,
        "error": run.error,
        "consecutive_failures": consecutive_failures,
        "text": text,
    }


def run_ended(job: JobConfig, run: Run, previous_failures: int, now: int) -> list[NewNotification]:
    """The `alerts` notifier's notification of a run's end, committed with it (none without
    `[alerts] webhook_url`)."""
    if not job.alert_webhook:
        return []
    body = message(job, run, previous_failures)
    if body is None:
        return []
    return [NewNotification(job.name, body["kind"], ALERTS_NOTIFIER, run.id, body, now)]


def describe_failure(run: Run) -> str:
    """E.g. 'run 42: exit code 1: boom' — the run, its exit code and a short error."""
    parts = [f"run {run.id}"]
    error = (run.error or "").strip()
    if run.exit_code is not None and f"exit code {run.exit_code}" not in error:
        parts.append(f"exit code {run.exit_code}")
    if error:
        first_line = error.splitlines()[0]
        parts.append(first_line if len(first_line) <= MAX_TEXT_ERROR else first_line[: MAX_TEXT_ERROR - 1] + "…")
    if len(parts) == 1:
        parts.append(run.status.value.lower())
    return ": ".join(parts)
