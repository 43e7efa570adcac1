"""What a run reports while it runs (`RunReporter`) and how it ends (`Outcome`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

MAX_COUNT = 10**18 - 1  # counts fit a 64-bit column: 18 digits, from a command or a handler
COUNT_FIELDS = ("total", "success", "failed", "skipped")


class RunReporter(Protocol):
    """Where a run's live output goes; implemented by the worker pool.

    Always called on the event loop's thread, also for handlers running in a thread.
    The methods should not raise: an exception ends the reading of that run's output.
    """

    def progress(self, percent: float, message: str | None) -> None: ...

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        """Only the fields given (not None) change."""

    def result(self, value: Any) -> None: ...

    def log(self, line: str, stream: str) -> None:
        """`stream` is "stdout", "stderr" or "handler"."""


@dataclasses.dataclass(slots=True)
class Outcome:
    exit_code: int | None = None  # commands only
    result: Any = None
    error: str | None = None  # None when the run succeeded
    timed_out: bool = False
    # A Python handler's exception (retry_on_exceptions); not part of what an outcome says.
    raised: BaseException | None = dataclasses.field(default=None, compare=False, repr=False)


def format_seconds(seconds: float) -> str:
    """5.0 → "5s", 0.25 → "0.25s"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def timeout_error(timeout_s: float | None) -> str:
    return f"timed out after {format_seconds(timeout_s or 0)}"
