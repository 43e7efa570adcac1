"""Failure and recovery alerts: a log line always, a JSON webhook POST when configured.

The run backend calls `run_finished` (an on_finished hook) after every terminal run it commits. It decides synchronously
and hands deliveries to background tasks, so a slow or dead webhook never holds up a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from structlog.typing import FilteringBoundLogger

from jobd.config import AlertsConfig, JobConfig
from jobd.models import Run, RunStatus
from jobd.store import JobState

SUCCESS_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.PARTIAL})
MAX_TEXT_ERROR = 300
MAX_BACKOFF_S = 30.0


class Alerter:
    def __init__(
        self,
        config: AlertsConfig,
        *,
        log: FilteringBoundLogger,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        max_in_flight: int = 100,
        backoff_s: float = 0.5,
        close_timeout_s: float = 2.0,
    ) -> None:
        self._config = config
        self._log = log
        self._session_factory = session_factory
        self._max_in_flight = max_in_flight
        self._backoff_s = backoff_s
        self._close_timeout_s = close_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sent = 0
        self._failed = 0

    @property
    def sent(self) -> int:
        """Webhook messages delivered (2xx)."""
        return self._sent

    @property
    def failed(self) -> int:
        """Webhook messages given up on: refused, retries used up, dropped or cut off by close()."""
        return self._failed

    async def start(self) -> None:
        if self._config.webhook_url and self._session is None and not self._closed:
            self._session = self._session_factory()

    async def close(self) -> None:
        """Give in-flight deliveries a short while to finish, then cancel the rest."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._close_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def run_finished(self, job: JobConfig, run: Run, state: JobState, previous_failures: int) -> None:
        """Alert when a failure streak reaches the job's threshold, and when it ends. Never raises.

        `state` is the job's state after this run, `previous_failures` its streak before it.
        """
        try:
            consecutive_failures = state.consecutive_failures
            threshold = job.alert_after_failures
            if run.status in SUCCESS_STATUSES:
                if previous_failures >= threshold:
                    self._recovery(job, run, previous_failures)
            elif consecutive_failures == threshold:
                # Only the run that reaches the threshold alerts; later failures of the same streak do not.
                self._failure(job, run, consecutive_failures)
        except Exception:
            self._log.exception("alert_error", job=job.name, run_id=run.id)

    def _failure(self, job: JobConfig, run: Run, consecutive_failures: int) -> None:
        if consecutive_failures == 1:
            text = f"jobd: job {job.name!r} failed ({describe_failure(run)})"
        else:
            text = (
                f"jobd: job {job.name!r} failed {consecutive_failures} times in a row (last: {describe_failure(run)})"
            )
        self._log.error(
            "job_alert",
            job=job.name,
            run_id=run.id,
            consecutive_failures=consecutive_failures,
            error=run.error,
            exit_code=run.exit_code,
        )
        self._send(
            {
                "kind": "failure",
                "job": job.name,
                "run_id": run.id,
                "error": run.error,
                "consecutive_failures": consecutive_failures,
                "text": text,
            }
        )

    def _recovery(self, job: JobConfig, run: Run, previous_failures: int) -> None:
        status = run.status.value.lower()
        text = f"jobd: job {job.name!r} recovered (run {run.id} {status})"
        self._log.warning(
            "job_recovered", job=job.name, run_id=run.id, status=status, previous_failures=previous_failures
        )
        self._send(
            {
                "kind": "recovery",
                "job": job.name,
                "run_id": run.id,
                "status": status,
                "previous_failures": previous_failures,
                "text": text,
            }
        )

    def _send(self, payload: dict[str, Any]) -> None:
        if self._config.webhook_url is None:
            return
        if self._session is None or self._closed:
            self._log.warning("alert_webhook_skipped", reason="alerter not running", job=payload["job"])
            return
        if len(self._tasks) >= self._max_in_flight:
            self._failed += 1
            self._log.warning(
                "alert_webhook_dropped",
                reason="too many deliveries in flight",
                in_flight=len(self._tasks),
                job=payload["job"],
                kind=payload["kind"],
            )
            return
        task = asyncio.get_running_loop().create_task(self._deliver(self._session, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        url = self._config.webhook_url
        assert url is not None
        timeout = aiohttp.ClientTimeout(total=self._config.webhook_timeout_s)
        attempts = 1 + self._config.webhook_retries
        error = ""
        try:
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
                try:
                    async with session.post(url, json=payload, timeout=timeout) as response:
                        if response.status < 300:
                            self._sent += 1
                            return
                        error = f"HTTP {response.status}"
                        # A 4xx will not get better by asking again (except when asked to slow down).
                        retry = response.status >= 500 or response.status == 429
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    retry = True
                if not retry:
                    break
            self._failed += 1
            self._log.warning(
                "alert_webhook_failed",
                job=payload["job"],
                kind=payload["kind"],
                attempts=attempt + 1,
                error=error,
            )
        except asyncio.CancelledError:
            self._failed += 1
            self._log.warning("alert_webhook_cancelled", job=payload["job"], kind=payload["kind"])
            raise
        except Exception:  # a bug here must not surface as "Task exception was never retrieved"
            self._failed += 1
            self._log.exception("alert_webhook_error", job=payload["job"], kind=payload["kind"])


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
