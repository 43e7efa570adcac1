"""The run record, its states and how it is shown as JSON.

A run is one execution of a job. Every part of jobd (store, workers, web, events) passes
`Run` objects around; this module is the one place that knows their fields.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import json.encoder
import math
import time
from datetime import UTC, datetime
from typing import Any


class RunStatus(str, enum.Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.PROCESSING})

# Transitions only go forward; a terminal run never changes again.
ALLOWED_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.PROCESSING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.PROCESSING: TERMINAL_STATUSES,
    **{status: frozenset() for status in TERMINAL_STATUSES},
}


class TriggerSource(str, enum.Enum):
    CRON = "cron"
    API = "api"
    MANUAL = "manual"
    RETRY = "retry"
    CATCHUP = "catchup"


class InvalidTransition(Exception):
    def __init__(self, run_id: int, current: RunStatus, wanted: RunStatus) -> None:
        super().__init__(f"run {run_id} is {current.value}; it cannot become {wanted.value}")
        self.current = current
        self.wanted = wanted


# One encoder for every compact JSON text jobd writes: json.dumps() with options builds a new one per call.
compact_json = json.JSONEncoder(separators=(",", ":"), default=str).encode
_json_string = json.encoder.encode_basestring_ascii  # what compact_json() writes a str with


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is too large for a JSON number")
    return value


def loads_standard(text: str | bytes) -> Any:
    """json.loads() of standard JSON only: NaN, Infinity and numbers that overflow to infinity
    (1e999) raise ValueError, since they would be written back as text no JSON parser reads."""
    # What json.loads() does, with one decoder for every call (json.loads() with an option
    # builds one per call: 2.7 against 0.9 us for a small body).
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    elif text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _standard_decode(text)


_standard_decode = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite_float).decode


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds: the unit every stored timestamp uses."""
    return time.time_ns() // 1_000_000


DAY_MS = 86_400_000
_SECOND_PREFIXES: dict[int, str] = {}


def iso_ms(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds → ISO-8601 UTC with milliseconds, e.g. 2026-11-23T19:06:01.123Z."""
    if epoch_ms is None:
        return None
    second, millis = divmod(epoch_ms, 1000)
    # Formatting a datetime costs more than the rest of a run's JSON; most times share a second.
    prefix = _SECOND_PREFIXES.get(second)
    if prefix is None:
        if len(_SECOND_PREFIXES) > 4096:
            _SECOND_PREFIXES.clear()
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _SECOND_PREFIXES[second] = prefix
    return f"{prefix}{millis:03d}Z"


def parse_iso_ms(text: str) -> int:
    """ISO-8601 (any offset, 'Z' allowed; naive means UTC) → epoch milliseconds."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


@dataclasses.dataclass(slots=True)
class Counts:
    total: int | None = None
    success: int = 0
    failed: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int | None]:
        return {
            "total": self.total,
            "success": self.success,
            "failed": self.failed,
            "skipped": self.skipped,
        }


@dataclasses.dataclass(slots=True)
class Run:
    id: int
    job: str
    status: RunStatus
    triggered_by: TriggerSource
    created_at: int
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    attempt: int = 1
    max_attempts: int = 1
    progress: float = 0.0
    message: str | None = None
    scheduled_for: int | None = None
    run_after: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    counts: Counts = dataclasses.field(default_factory=Counts)
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    retry_of: int | None = None
    log_tail: str = ""
    # Bumped on every change; lets events and caches tell a fresh copy from a stale one.
    updated_at: int = 0

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_json(self, *, with_log: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "job": self.job,
            "status": self.status.value,
            "progress": self.progress,
            "message": self.message,
            "triggered_by": self.triggered_by.value,
            "params": self.params,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "scheduled_for": iso_ms(self.scheduled_for),
            "run_after": iso_ms(self.run_after),
            "created_at": iso_ms(self.created_at),
            "started_at": iso_ms(self.started_at),
            "finished_at": iso_ms(self.finished_at),
            "updated_at": iso_ms(self.updated_at or self.created_at),
            "duration_ms": self.duration_ms,
            "counts": self.counts.as_dict(),
            "result": self.result,
            "error": self.error,
            "exit_code": self.exit_code,
            "retry_of": self.retry_of,
        }
        if with_log:
            data["log_tail"] = self.log_tail
        return data

    def to_json_text(self) -> str:
        """compact_json(self.to_json()), the same text at half the cost: the JSON encoder spends
        most of its time on the keys, written here once. Used for the 202 of every trigger.
        The fields hold what the rest of jobd puts in them (ints are ints, texts are str)."""
        c, text, null = self.counts, _json_string, "null"
        message, error, duration = self.message, self.error, self.duration_ms
        return (
            f'{{"id":{self.id},"job":{text(self.job)},"status":"{self.status.value}",'
            f'"progress":{_number(self.progress)},"message":{null if message is None else text(message)},'
            f'"triggered_by":"{self.triggered_by.value}","params":{compact_json(self.params)},'
            f'"attempt":{self.attempt},"max_attempts":{self.max_attempts},'
            f'"scheduled_for":{_time(self.scheduled_for)},"run_after":{_time(self.run_after)},'
            f'"created_at":{_time(self.created_at)},"started_at":{_time(self.started_at)},'
            f'"finished_at":{_time(self.finished_at)},"updated_at":{_time(self.updated_at or self.created_at)},'
            f'"duration_ms":{null if duration is None else duration},'
            f'"counts":{{"total":{null if c.total is None else c.total},"success":{c.success},'
            f'"failed":{c.failed},"skipped":{c.skipped}}},'
            f'"result":{null if self.result is None else compact_json(self.result)},'
            f'"error":{null if error is None else text(error)},'
            f'"exit_code":{null if self.exit_code is None else self.exit_code},'
            f'"retry_of":{null if self.retry_of is None else self.retry_of}}}'
        )

    def assign(self, other: Run) -> None:
        """Take every field of `other` (a copy of this run with a newer state)."""
        _assign(self, other)

    def copy(self) -> Run:
        return _copy(self)


def status_update(run: Run) -> dict[str, Any]:
    """The `status_update` event of a run's change."""
    return {
        "run_id": run.id,
        "job": run.job,
        "status": run.status.value,
        "progress": run.progress,
        "message": run.message,
        "counts": run.counts.as_dict(),
        "error": run.error,
        "result": run.result,
        "attempt": run.attempt,
        "updated_at": iso_ms(run.updated_at or run.created_at),
    }


_RUN_FIELDS = tuple(field.name for field in dataclasses.fields(Run))


def _number(value: Any) -> str:
    # float.__repr__ is what the encoder writes a finite float with (NaN and infinities differ).
    return float.__repr__(value) if type(value) is float and value - value == 0 else compact_json(value)


def _time(epoch_ms: int | None) -> str:
    return "null" if epoch_ms is None else f'"{iso_ms(epoch_ms)}"'


def _compiled(signature: str, lines: list[str]) -> Any:
    """A function of straight-line field assignments, made once, as dataclasses makes __init__: a
    loop of getattr()/setattr() costs 2-7 times as much, and a finishing run is copied and assigned.
    (dataclasses.replace() re-runs __init__ and costs more still.)"""
    namespace: dict[str, Any] = {"Run": Run, "Counts": Counts, "new": object.__new__}
    exec("\n    ".join([f"def {signature}:", *lines]), namespace)
    return namespace[signature.partition("(")[0]]


_assign = _compiled("_assign(self, other)", [f"self.{field} = other.{field}" for field in _RUN_FIELDS])
_copy = _compiled(
    "_copy(self)",
    [
        "clone = new(Run)",
        *(f"clone.{field} = self.{field}" for field in _RUN_FIELDS if field != "counts"),
        "c = self.counts",
        "clone.counts = Counts(c.total, c.success, c.failed, c.skipped)",
        "return clone",
    ],
)
