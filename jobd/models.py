"""The run record, its states and how it is shown as JSON.

A run is one execution of a job. Every part of jobd (store, workers, web, events) passes
`Run` objects around; this module is the one place that knows their fields.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import attrgetter
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
    # What json.loads() does, with one decoder for every call (json.loads() with an option builds one per call).
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
        """The run as the API shows it (see RUN_JSON)."""
        data = {field.name: field.read(self) for field in RUN_JSON}
        if with_log:
            data[LOG_TAIL.name] = LOG_TAIL.read(self)
        return data

    def assign(self, other: Run) -> None:
        """Take every field of `other` (a copy of this run with a newer state)."""
        for name in _RUN_ATTRIBUTES:
            setattr(self, name, getattr(other, name))

    def copy(self) -> Run:
        """A copy that shares nothing mutable but params and result, which are never changed in place."""
        return dataclasses.replace(self, counts=dataclasses.replace(self.counts))


_RUN_ATTRIBUTES = tuple(field.name for field in dataclasses.fields(Run))


# -- the run on the wire: one table, from which its JSON, its status updates and their schemas come --

Schema = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class WireField:
    """One field of a run's JSON: its name, how it is read from a Run, and its JSON Schema. A str
    schema names a shared component (RunStatus, TriggerSource, Counts; see json_schema_components)."""

    name: str
    read: Callable[[Run], Any]
    schema: Schema | str


def _nullable(schema: Schema) -> Schema:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_ID: Schema = {"type": "integer", "minimum": 1}
_TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC with milliseconds"}


def _time_of(attribute: str) -> Callable[[Run], str | None]:
    get = attrgetter(attribute)
    return lambda run: iso_ms(get(run))


RUN_JSON: tuple[WireField, ...] = (
    WireField("id", attrgetter("id"), _ID),
    WireField("job", attrgetter("job"), _STR),
    WireField("status", attrgetter("status.value"), "RunStatus"),
    WireField("progress", attrgetter("progress"), {"type": "number", "minimum": 0, "maximum": 100}),
    WireField("message", attrgetter("message"), _nullable(_STR)),
    WireField("triggered_by", attrgetter("triggered_by.value"), "TriggerSource"),
    WireField("params", attrgetter("params"), {"type": "object"}),
    WireField("attempt", attrgetter("attempt"), _ID),
    WireField("max_attempts", attrgetter("max_attempts"), _ID),
    WireField("scheduled_for", _time_of("scheduled_for"), _nullable(_TIME)),
    WireField("run_after", _time_of("run_after"), _nullable(_TIME)),
    WireField("created_at", _time_of("created_at"), _TIME),
    WireField("started_at", _time_of("started_at"), _nullable(_TIME)),
    WireField("finished_at", _time_of("finished_at"), _nullable(_TIME)),
    # A run not yet changed since its creation has no updated_at of its own.
    WireField("updated_at", lambda run: iso_ms(run.updated_at or run.created_at), _TIME),
    WireField("duration_ms", attrgetter("duration_ms"), _nullable(_COUNT)),
    WireField("counts", lambda run: run.counts.as_dict(), "Counts"),
    WireField("result", attrgetter("result"), {"description": "what the run returned (any JSON)"}),
    WireField("error", attrgetter("error"), _nullable(_STR)),
    WireField("exit_code", attrgetter("exit_code"), _nullable(_INT)),
    WireField("retry_of", attrgetter("retry_of"), _nullable(_ID)),
)
# Shown only where one run is asked for with its log.
LOG_TAIL = WireField(
    "log_tail", attrgetter("log_tail"), {"type": "string", "description": "the last part of the run's log"}
)
_BY_NAME = {field.name: field for field in RUN_JSON}
# A stream's status_update: (its key, the run JSON field it shows), in the order they are sent.
STATUS_UPDATE: tuple[tuple[str, WireField], ...] = tuple(
    (key, _BY_NAME[name])
    for key, name in (
        ("run_id", "id"),
        ("job", "job"),
        ("status", "status"),
        ("progress", "progress"),
        ("message", "message"),
        ("counts", "counts"),
        ("error", "error"),
        ("result", "result"),
        ("attempt", "attempt"),
        ("updated_at", "updated_at"),
    )
)


def status_update(run: Run) -> dict[str, Any]:
    """What a `status_update` stream message says of a run (without its `type`)."""
    return {key: field.read(run) for key, field in STATUS_UPDATE}


def status_update_of(run_json: Mapping[str, Any]) -> dict[str, Any]:
    """A run as GET /runs/{id} shows it → the stream message `status_update` would show for it."""
    return {"type": "status_update", **{key: run_json[field.name] for key, field in STATUS_UPDATE}}


def _object(properties: dict[str, Schema], description: str | None = None) -> Schema:
    """A closed object whose properties are all required."""
    schema: Schema = {"type": "object"}
    if description:
        schema["description"] = description
    return {**schema, "properties": properties, "required": list(properties), "additionalProperties": False}


def json_schema_components() -> dict[str, Schema]:
    """The schemas that run fields share, by the names the fields' schemas give them."""
    return {
        "RunStatus": {"type": "string", "enum": [status.value for status in RunStatus]},
        "TriggerSource": {"type": "string", "enum": [source.value for source in TriggerSource]},
        "Counts": _object(
            {"total": _nullable(_COUNT), "success": _COUNT, "failed": _COUNT, "skipped": _COUNT},
            "items a run reported handling (::counts:: or ctx.counts)",
        ),
    }


def _field_schema(field: WireField, ref: Callable[[str], Schema] | None) -> Schema:
    if isinstance(field.schema, str):
        return ref(field.schema) if ref is not None else json_schema_components()[field.schema]
    return field.schema


def run_json_schema(*, with_log: bool = False, ref: Callable[[str], Schema] | None = None) -> Schema:
    """The JSON Schema of Run.to_json(with_log=...). Shared components are written in place, or
    as `ref(name)` when a ref is given (e.g. a $ref into an OpenAPI document's components)."""
    fields = (*RUN_JSON, LOG_TAIL) if with_log else RUN_JSON
    return copy.deepcopy(_object({field.name: _field_schema(field, ref) for field in fields}))


def status_update_json_schema(*, ref: Callable[[str], Schema] | None = None) -> Schema:
    """The JSON Schema of a `status_update` stream message, `type` included."""
    properties = {key: _field_schema(field, ref) for key, field in STATUS_UPDATE}
    return copy.deepcopy(_object({"type": {"const": "status_update"}, **properties}))
