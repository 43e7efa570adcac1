"""Keeping a run's secrets (its secret params' values, its `secret_env` values) out of what it
reports: log lines, progress messages, its result and its error have each secret value's text
replaced by "***" before they reach the worker pool, and so before the run's log, the store, the
events and any stream."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from jobd.config.params import REDACTED
from jobd.runner.reporting import Outcome, RunReporter


def hidden_texts(*groups: Iterable[str]) -> tuple[str, ...]:
    """The texts to hide, longest first (so that no shorter one cuts into a longer); empty ones
    hide nothing."""
    return tuple(sorted({text for group in groups for text in group if text}, key=len, reverse=True))


def redact_text(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:  # longest first (Params.secret_values)
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, secrets: Sequence[str]) -> Any:
    """A JSON value with each secret's text replaced in its strings (keys included)."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, list):
        return [redact_value(item, secrets) for item in value]
    if isinstance(value, dict):
        return {redact_text(str(k), secrets): redact_value(v, secrets) for k, v in value.items()}
    return value


class RedactingReporter:
    """A RunReporter that hides the secrets from the one it forwards to."""

    __slots__ = ("inner", "secrets")

    def __init__(self, inner: RunReporter, secrets: Sequence[str]) -> None:
        self.inner = inner
        self.secrets = secrets

    def progress(self, percent: float, message: str | None) -> None:
        self.inner.progress(percent, None if message is None else redact_text(message, self.secrets))

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        self.inner.counts(total, success, failed, skipped)

    def result(self, value: Any) -> None:
        self.inner.result(redact_value(value, self.secrets))

    def log(self, line: str, stream: str) -> None:
        self.inner.log(redact_text(line, self.secrets), stream)


def redact_outcome(outcome: Outcome, secrets: Sequence[str]) -> Outcome:
    return dataclasses.replace(
        outcome,
        result=redact_value(outcome.result, secrets),
        error=None if outcome.error is None else redact_text(outcome.error, secrets),
    )
