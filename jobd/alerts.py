"""The log lines of failure and recovery alerts: `job_alert` (error) when a job's failure streak
reaches its `alert_after_failures`, `job_recovered` (warning) at the success that ends it.

They are written whether or not `[alerts] webhook_url` is set. The webhook itself is a notifier
(jobd.notify.alerts): its messages commit with the run's end and are delivered like every other
notification, so nothing here sends anything.
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from jobd.config import JobConfig
from jobd.models import Run
from jobd.notify.alerts import message
from jobd.store import JobState


class AlertLog:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log

    def run_finished(self, job: JobConfig, run: Run, state: JobState, previous_failures: int) -> None:
        """An on_finished hook, after the run's end (and its alert) is committed. Never raises."""
        try:
            alert = message(job, run, previous_failures)
            if alert is None:
                return
            if alert["kind"] == "failure":
                self._log.error(
                    "job_alert",
                    job=job.name,
                    run_id=run.id,
                    consecutive_failures=alert["consecutive_failures"],
                    error=run.error,
                    exit_code=run.exit_code,
                )
            else:
                self._log.warning(
                    "job_recovered",
                    job=job.name,
                    run_id=run.id,
                    status=alert["status"],
                    previous_failures=previous_failures,
                )
        except Exception:
            self._log.exception("alert_error", job=job.name, run_id=run.id)
