"""The stdout protocol of commands: `::progress::`, `::counts::` and `::result::` lines.

    ::progress::42 optional message      percent 0-100 (clamped), message optional
    ::counts::total=50 success=46 failed=2 skipped=2   any subset of the four
    ::result::{"any": "JSON"}           the last one becomes the run's result

Every other stdout line, and every malformed protocol line, is a log line.
"""

from __future__ import annotations

import math
from typing import Any

from jobd.models import loads_standard
from jobd.runner.reporting import COUNT_FIELDS, RunReporter

MAX_ERROR_DETAIL = 500


class CommandOutput:
    """Turns a command's output lines into reporter calls."""

    def __init__(self, reporter: RunReporter) -> None:
        self.reporter = reporter
        self.result: Any = None
        self.last_stderr: str | None = None

    def stdout_line(self, line: str) -> None:
        if not self._protocol(line):
            self.reporter.log(line, "stdout")

    def stderr_line(self, line: str) -> None:
        if line.strip():
            self.last_stderr = _shorten(line.strip())
        self.reporter.log(line, "stderr")

    def _protocol(self, line: str) -> bool:
        """Handle a valid protocol line; False for anything else (which is then logged)."""
        if line.startswith("::progress::"):
            return self._progress(line[len("::progress::") :])
        if line.startswith("::counts::"):
            return self._counts(line[len("::counts::") :])
        if line.startswith("::result::"):
            return self._result(line[len("::result::") :])
        return False

    def _progress(self, text: str) -> bool:
        parts = text.split(None, 1)
        try:
            percent = float(parts[0])
        except (IndexError, ValueError):
            return False
        if math.isnan(percent):
            return False
        message = parts[1].strip() if len(parts) > 1 else None
        self.reporter.progress(min(100.0, max(0.0, percent)), message or None)
        return True

    def _counts(self, text: str) -> bool:
        values: dict[str, int] = {}
        for item in text.split():
            key, sep, number = item.partition("=")
            if not sep or key not in COUNT_FIELDS or not _is_count(number):
                return False
            values[key] = int(number)
        if not values:
            return False
        self.reporter.counts(**values)
        return True

    def _result(self, text: str) -> bool:
        try:
            value = loads_standard(text)
        except ValueError:
            return False
        self.result = value
        self.reporter.result(value)
        return True


def _is_count(text: str) -> bool:
    # ASCII digits only, and small enough for a 64-bit column (at most MAX_COUNT).
    return text.isascii() and text.isdigit() and len(text) <= 18


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_DETAIL else text[: MAX_ERROR_DETAIL - 1] + "…"
