"""The run record, its states and how it is shown as JSON.

A run is one execution of a job. Every part of jobd (store, workers, web, events) passes
`Run` objects around; this module is the one place that knows their fields.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
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
    CHAIN = "chain"  # another run's end (its job's on_success, on_failure, on_finish)


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


def iso_ms(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds → ISO-8601 UTC with milliseconds, e.g. 2026-11-23T19:06:01.123Z."""
    if epoch_ms is None:
        return None
    second, millis = divmod(epoch_ms, 1000)
    return f"{_second_prefix(second)}{millis:03d}Z"


# Performance: see docs/performance.md (Run JSON: times formatted once a second)
@functools.lru_cache(maxsize=4096)
def _second_prefix(second: int) -> str:
    """2026-11-23T19:06:01. for the epoch second: formatting a datetime costs more than the rest of
    a run's JSON, and the times written together mostly share a second."""
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


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
    node: str | None = None  # the cluster node that executes or executed it (None on SQLite)
    # Chains (see jobd/chains.py): the run whose end made this one, how many runs came before it
    # in its chain, and, once it has ended, what its own end made (the `children` of the API).
    parent_run_id: int | None = None
    chain_depth: int = 0
    children: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    priority: int = 0  # among startable runs the highest starts first (see docs/scheduling.md)

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def changed_at(self) -> int:
        """When the run last changed: updated_at, or created_at for a run not changed since."""
        return self.updated_at or self.created_at

    def to_json(self, *, with_log: bool = False) -> dict[str, Any]:
        """The run as the API shows it (see RUN_JSON)."""
        return (_RUN_WITH_LOG if with_log else _RUN)(self)

    def assign(self, other: Run) -> None:
        """Take every field of `other` (a copy of this run with a newer state)."""
        self.id = other.id
        self.job = other.job
        self.status = other.status
        self.triggered_by = other.triggered_by
        self.created_at = other.created_at
        self.params = other.params
        self.attempt = other.attempt
        self.max_attempts = other.max_attempts
        self.progress = other.progress
        self.message = other.message
        self.scheduled_for = other.scheduled_for
        self.run_after = other.run_after
        self.started_at = other.started_at
        self.finished_at = other.finished_at
        self.counts = other.counts
        self.result = other.result
        self.error = other.error
        self.exit_code = other.exit_code
        self.retry_of = other.retry_of
        self.log_tail = other.log_tail
        self.updated_at = other.updated_at
        self.node = other.node
        self.parent_run_id = other.parent_run_id
        self.chain_depth = other.chain_depth
        self.children = other.children
        self.priority = other.priority

    def copy(self) -> Run:
        """A copy that shares nothing mutable but params, result and children, which are never changed in place."""
        c = self.counts
        return Run(
            id=self.id,
            job=self.job,
            status=self.status,
            triggered_by=self.triggered_by,
            created_at=self.created_at,
            params=self.params,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            progress=self.progress,
            message=self.message,
            scheduled_for=self.scheduled_for,
            run_after=self.run_after,
            started_at=self.started_at,
            finished_at=self.finished_at,
            counts=Counts(c.total, c.success, c.failed, c.skipped),
            result=self.result,
            error=self.error,
            exit_code=self.exit_code,
            retry_of=self.retry_of,
            log_tail=self.log_tail,
            updated_at=self.updated_at,
            node=self.node,
            parent_run_id=self.parent_run_id,
            chain_depth=self.chain_depth,
            children=self.children,
            priority=self.priority,
        )


# -- the run on the wire: one table, from which its JSON, its status updates and their schemas come --

Schema = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class WireField:
    """One field of a run's JSON: its name, the Run attribute it shows (a dotted path), how that
    value is written in JSON (as it is when `encode` is None), and its JSON Schema. A str schema
    names a shared component (RunStatus, TriggerSource, Counts; see json_schema_components)."""

    name: str
    attribute: str
    schema: Schema | str
    encode: Callable[[Any], Any] | None = None


class _JsonOf:
    """Builds the JSON object of a run from a sequence of (key, field): all attributes read in one
    attrgetter call, then the few that need it encoded."""

    def __init__(self, fields: Sequence[tuple[str, WireField]]) -> None:
        self.keys = tuple(key for key, _ in fields)
        self.attributes = attrgetter(*(field.attribute for _, field in fields))
        self.encoders = tuple((index, field.encode) for index, (_, field) in enumerate(fields) if field.encode)

    def __call__(self, run: Run) -> dict[str, Any]:
        values = list(self.attributes(run))
        for index, encode in self.encoders:
            values[index] = encode(values[index])
        return dict(zip(self.keys, values))


def _nullable(schema: Schema) -> Schema:
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_ID: Schema = {"type": "integer", "minimum": 1}
_TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC with milliseconds"}


RUN_JSON: tuple[WireField, ...] = (
    WireField("id", "id", _ID),
    WireField("job", "job", _STR),
    WireField("status", "status.value", "RunStatus"),
    WireField("progress", "progress", {"type": "number", "minimum": 0, "maximum": 100}),
    WireField("message", "message", _nullable(_STR)),
    WireField("triggered_by", "triggered_by.value", "TriggerSource"),
    WireField("params", "params", {"type": "object"}),
    WireField("attempt", "attempt", _ID),
    WireField("max_attempts", "max_attempts", _ID),
    WireField("scheduled_for", "scheduled_for", _nullable(_TIME), iso_ms),
    WireField("run_after", "run_after", _nullable(_TIME), iso_ms),
    WireField("created_at", "created_at", _TIME, iso_ms),
    WireField("started_at", "started_at", _nullable(_TIME), iso_ms),
    WireField("finished_at", "finished_at", _nullable(_TIME), iso_ms),
    WireField("updated_at", "changed_at", _TIME, iso_ms),
    WireField("duration_ms", "duration_ms", _nullable(_COUNT)),
    WireField("counts", "counts", "Counts", Counts.as_dict),
    WireField("result", "result", {"description": "what the run returned (any JSON)"}),
    WireField("error", "error", _nullable(_STR)),
    WireField("exit_code", "exit_code", _nullable(_INT)),
    WireField("retry_of", "retry_of", _nullable(_ID)),
    WireField("node", "node", _nullable(_STR)),
    WireField("parent_run_id", "parent_run_id", _nullable(_ID)),
    WireField("priority", "priority", {"type": "integer", "description": "higher starts first"}),
)
# Shown only where one run is asked for with its log.
LOG_TAIL = WireField("log_tail", "log_tail", {"type": "string", "description": "the last part of the run's log"})
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
        ("parent_run_id", "parent_run_id"),
    )
)


_RUN = _JsonOf([(field.name, field) for field in RUN_JSON])
_RUN_WITH_LOG = _JsonOf([(field.name, field) for field in (*RUN_JSON, LOG_TAIL)])
_STATUS_UPDATE = _JsonOf(STATUS_UPDATE)


def status_update(run: Run) -> dict[str, Any]:
    """What a `status_update` stream message says of a run (without its `type`)."""
    return _STATUS_UPDATE(run)


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
