"""`RunContext`: what a Python handler is given to report progress, counts and log lines."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from jobd.config import JobConfig
from jobd.models import Run
from jobd.runner.reporting import COUNT_FIELDS, MAX_COUNT, RunReporter


class RunContext:
    """The first argument of a Python handler, which is called as ``handler(ctx, params)``.

    Attributes:
        run_id:  the run's id (int).
        job:     the job's name.
        attempt: 1 for the first try, 2, 3, … for retries.
        params:  the run's parameters (the same dict as the second argument).
        secrets: the job's `secret_env` values by variable name, read at the run's start (a
                 read-only mapping; os.environ is not changed: it is shared by every run).
        cancelled: True once the run has timed out or been cancelled (read-only).

    Methods (each may be called from the event loop or from the handler's own thread):
        progress(percent, message=None)  percent 0-100, clamped; message optional.
        counts(total=None, success=None, failed=None, skipped=None)
                                         non-negative ints; only those given change.
        log(*parts)                      one log line, parts joined by spaces like print().

    Async handlers run on the daemon's event loop and are cancelled on timeout or cancellation; one
    that ignores its cancellation is left behind after `workers.kill_grace_s` (the run ends anyway).
    Plain functions run in a thread of their own, which cannot be interrupted: a long one should check
    `ctx.cancelled` now and then and return when it becomes True. Reports made after the run
    has ended are dropped.
    """

    def __init__(
        self,
        run: Run,
        job: JobConfig,
        reporter: RunReporter,
        loop: asyncio.AbstractEventLoop,
        *,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.run_id = run.id
        self.job = job.name
        self.attempt = run.attempt
        self.params = run.params
        self.secrets: Mapping[str, str] = MappingProxyType(dict(secrets or {}))
        self._reporter = reporter
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cancelled = False
        self._finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def progress(self, percent: float, message: str | None = None) -> None:
        value = float(percent)
        if math.isnan(value):
            raise ValueError("progress: percent is NaN")
        text = None if message is None else utf8_safe(str(message))
        self._post(self._reporter.progress, min(100.0, max(0.0, value)), text)

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        given = {
            name: value for name, value in zip(COUNT_FIELDS, (total, success, failed, skipped)) if value is not None
        }
        for name, value in given.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise ValueError(f"counts: {name} must be an integer from 0 to {MAX_COUNT}, not {value!r}")
        self._post(self._send_counts, given)

    def log(self, *parts: object) -> None:
        text = utf8_safe(" ".join(str(part) for part in parts))
        self._post(self._send_lines, text.splitlines() or [""])

    def _send_counts(self, values: dict[str, int]) -> None:
        self._reporter.counts(**values)

    def _send_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._reporter.log(line, "handler")

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._finished:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, fn, args)
        except RuntimeError:  # the loop is closed: the run is long over
            pass

    def _deliver(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self._finished:
            fn(*args)

    def _stop(self, *, cancelled: bool) -> None:
        self._cancelled = self._cancelled or cancelled
        self._finished = True


def utf8_safe(text: str) -> str:
    """A handler's text as UTF-8 can hold it: a lone surrogate, which the store cannot take (the
    run's end could not be committed), is written as its escape, \\udcff."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text
