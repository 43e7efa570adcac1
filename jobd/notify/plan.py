"""Which notifications a change makes: pure functions over a job's `notify` rules and its run.

The run lifecycle calls these while it builds the transaction of a run's start or end, so the
notifications commit with the change (see docs/notifications.md#delivery).
"""

from __future__ import annotations

from typing import Any

from jobd.config import JobConfig
from jobd.config.runrules import is_too_short, pause_reason, pauses
from jobd.models import Run, RunStatus, iso_ms
from jobd.notify import alerts
from jobd.store.notifications import NewNotification

SUCCESS = (RunStatus.COMPLETED, RunStatus.PARTIAL)


def describe(event: str, job: str, run: Run | None, fields: dict[str, Any]) -> str:
    """The one-line text of an event (`$text` in templates)."""
    what = f"run {run.id}" if run is not None else "job"
    if event == "start":
        return f"jobd: job {job!r} started ({what})"
    if event == "success":
        status = run.status.value.lower() if run is not None else "completed"
        return f"jobd: job {job!r} succeeded ({what} {status})"
    if event == "failure":
        error = ((run.error if run is not None else None) or "").strip().splitlines()
        first = error[0][:300] if error else "failed"
        return f"jobd: job {job!r} failed ({what}: {first})"
    if event == "recovery":
        return f"jobd: job {job!r} recovered ({what}, after {fields.get('previous_failures', 0)} failures)"
    if event == "late":
        return f"jobd: job {job!r} is late ({fields.get('reason') or 'its run has not started'})"
    if event == "long":
        return f"jobd: job {job!r} runs too long ({what}: {fields.get('reason') or 'past its limit'})"
    return f"jobd: job {job!r}: {event}"


def payload(event: str, job: str, run: Run | None, now: int, **fields: Any) -> dict[str, Any]:
    """What every notifier gets of an event: a command reads it on stdin, a webhook without a
    body template receives it as its JSON body."""
    return {
        "event": event,
        "job": job,
        "text": describe(event, job, run, fields),
        "at": iso_ms(now),
        "run": run.to_json() if run is not None else None,
        **fields,
    }


def make(job: JobConfig, event: str, run: Run | None, now: int, **fields: Any) -> list[NewNotification]:
    names = job.notify.of(event)
    if not names:
        return []
    body = payload(event, job.name, run, now, **fields)
    run_id = run.id if run is not None else None
    return [NewNotification(job.name, event, name, run_id, body, now) for name in names]


def run_started(job: JobConfig | None, run: Run, now: int) -> list[NewNotification]:
    if job is None:
        return []
    return make(job, "start", run, now)


def run_ended(
    job: JobConfig | None, final: Run, previous_failures: int, *, retrying: bool, now: int
) -> list[NewNotification]:
    """on_success (and on_recovery after failures) for COMPLETED and PARTIAL; on_failure for a
    FAILED run that no retry follows (its last attempt); nothing for CANCELLED."""
    if job is None:
        return []
    made = alerts.run_ended(job, final, previous_failures, now)  # [alerts]: its own threshold and payload
    if final.status in SUCCESS:
        made += make(job, "success", final, now)
        if previous_failures > 0:
            made += make(job, "recovery", final, now, previous_failures=previous_failures)
        if is_too_short(final):
            made += make(job, "failure", final, now, reason="too_short")
        return made
    if final.status is not RunStatus.FAILED:
        return made
    streak = previous_failures + 1
    if not retrying:
        made += make(job, "failure", final, now, consecutive_failures=streak)
    if pauses(job.rules, previous_failures, streak):  # the job paused itself in this transaction
        reason = pause_reason(job.rules, streak)
        made += make(job, "failure", final, now, reason="paused", pause_reason=reason, consecutive_failures=streak)
    return made
