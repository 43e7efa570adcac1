"""The storage interface. SQLite implements it today; a PostgreSQL store can sit beside it.

Writes are declared, not executed: `write()` hands run rows, job states and idempotency keys to
the store, which commits them in groups and returns once they are committed (`submit()` does the
same without waiting and returns a future). `write_lazy()` hands
in a run whose change may wait (a progress tick): it is written with the next commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from jobd.errors import Unavailable
from jobd.models import Counts, Run, RunStatus, TriggerSource
from jobd.store.notifications import NewNotification


class StoreError(Exception):
    """The store cannot be opened: not a database, unreadable, or from a newer jobd. One line."""


class StoreLocked(StoreError):
    """Another jobd process holds this store."""


class StoreUnavailable(Unavailable):
    """A write failed for a reason that may pass (a lock held too long, a full disk, an I/O error):
    the same request may succeed later. Rows the database refuses raise other errors."""

    slug = "store-unavailable"


@dataclasses.dataclass(slots=True)
class JobState:
    """What jobd remembers of a job between runs and restarts."""

    job: str
    paused: bool = False
    last_fire_at: int | None = None
    skipped_fires: int = 0
    last_skipped_at: int | None = None
    consecutive_failures: int = 0
    last_run_id: int | None = None
    last_skip_reason: str | None = None  # "overlap" or "excluded" (a calendar or the active period)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> JobState:
        return JobState(
            self.job,
            self.paused,
            self.last_fire_at,
            self.skipped_fires,
            self.last_skipped_at,
            self.consecutive_failures,
            self.last_run_id,
            self.last_skip_reason,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class IdempotencyKey:
    job: str
    key: str
    run_id: int
    created_at: int


@dataclasses.dataclass(frozen=True, slots=True)
class DeletedRuns:
    """One batch of retention: the runs deleted (their log files are the caller's), and where the
    next batch starts (None once every candidate has been looked at)."""

    deleted: list[tuple[int, RunStatus]]
    cursor: tuple[int, int] | None


@dataclasses.dataclass(frozen=True, slots=True)
class RunFilter:
    job: str | None = None
    jobs: tuple[str, ...] | None = None  # runs of these jobs only (a token limited to some jobs)
    status: tuple[RunStatus, ...] = ()
    triggered_by: tuple[TriggerSource, ...] = ()
    since: int | None = None  # created_at >= since (epoch ms)
    until: int | None = None  # created_at < until
    # The cursor: only runs with id < before_id. It places a page rather than filtering, so the
    # total of list_runs counts every run matching the other fields.
    before_id: int | None = None
    parent: int | None = None  # runs made by this run's end (its chain's children)


@dataclasses.dataclass(slots=True)
class JobStats:
    """One job's share of a RunStats period."""

    by_status: dict[RunStatus, int]
    timed: int = 0  # runs with a duration (finished ones)
    duration_sum_ms: int = 0
    p95_ms: int | None = None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclasses.dataclass(slots=True)
class RunStats:
    """Runs created in whole UTC days [first_day, last_day], day numbers being epoch ms // DAY_MS.

    p95 is the nearest-rank 95th percentile of duration_ms: the ceil(0.95 n)-th shortest.
    `jobs` has a JobStats per job with runs in the period, unless the query was for one job.
    """

    first_day: int
    last_day: int
    by_status: dict[RunStatus, int]
    by_trigger: dict[TriggerSource, int]
    timed: int
    duration_sum_ms: int
    p95_ms: int | None
    # day → (runs, COMPLETED or PARTIAL, FAILED); days without runs are absent
    days: dict[int, tuple[int, int, int]]
    jobs: dict[str, JobStats]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


class StoreReads(Protocol):
    """What is read from a store, and retention: every store has these (a cluster's writes go
    through its backend instead)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get_runs(self, run_ids: Sequence[int]) -> list[Run]: ...

    async def get_run(self, run_id: int) -> Run | None: ...

    async def list_runs(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]: ...

    async def summarize_runs(self, where: RunFilter) -> dict[str, Any]: ...

    async def run_stats(self, *, first_day: int, last_day: int, job: str | None = None) -> RunStats: ...

    async def last_run(self, job: str) -> Run | None: ...

    async def active_runs(self) -> Sequence[Run]: ...

    async def count_by_status(self) -> dict[RunStatus, int]: ...

    async def find_idempotent(self, job: str, key: str, since: int) -> int | None: ...

    async def scheduled_times(self, job: str, times: Sequence[int]) -> set[int]:
        """Which of `times` (epoch ms) a run of `job` is already scheduled for (a backfill's dedupe)."""
        ...

    async def job_states(self) -> dict[str, JobState]: ...

    async def delete_runs(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns: ...

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int: ...


class Store(StoreReads, Protocol):
    """A store that also takes the writes of a single process (group commit)."""

    def allocate_run_id(self) -> int: ...

    async def write(
        self,
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
    ) -> None: ...

    def submit(
        self,
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
    ) -> asyncio.Future[None]: ...

    def submit_then(
        self,
        then: Callable[[Exception | None], None],
        runs: Iterable[Run] = (),
        job_states: Iterable[JobState] = (),
        keys: Iterable[IdempotencyKey] = (),
        notifications: Iterable[NewNotification] = (),
    ) -> None: ...

    def write_lazy(self, run: Run) -> None: ...

    async def flush(self) -> None: ...


# -- what both stores share ------------------------------------------------------------------------

# The columns of a run's row, in SQLite and in PostgreSQL alike (copy-store moves them as they are).
RUN_COLUMNS = (
    "id",
    "job",
    "status",
    "progress",
    "message",
    "triggered_by",
    "params",
    "attempt",
    "max_attempts",
    "scheduled_for",
    "run_after",
    "created_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "counts_total",
    "counts_success",
    "counts_failed",
    "counts_skipped",
    "result",
    "error",
    "exit_code",
    "retry_of",
    "log_tail",
    "updated_at",
    "parent_run_id",
    "chain_depth",
    "children",
    "priority",
)
# A cluster's rows may carry the node that claimed the run (and its claim token) after RUN_COLUMNS.
NODE_COLUMN = len(RUN_COLUMNS)
# What a run is never changes after it is created: writes of a run leave these columns alone.
IMMUTABLE_RUN_COLUMNS = frozenset(
    {
        "id",
        "job",
        "triggered_by",
        "params",
        "attempt",
        "max_attempts",
        "scheduled_for",
        "created_at",
        "retry_of",
        "parent_run_id",
        "chain_depth",
        "priority",
    }
)


def summary_of(row: Sequence[Any]) -> dict[str, Any]:
    """summarize_runs() from one aggregate row: runs, ok, failed, items, success, failed items,
    skipped items, timed runs, the sum of their durations."""
    runs, ok, failed, items, success, items_failed, skipped, timed, duration_sum = row
    return {
        "runs": runs or 0,
        "successful_runs": ok or 0,
        "failed_runs": failed or 0,
        "total_items": items or 0,
        "successful_items": success or 0,
        "failed_items": items_failed or 0,
        "skipped_items": skipped or 0,
        "average_duration_ms": round(duration_sum / timed, 1) if timed else None,
    }


def row_to_run(row: Sequence[Any]) -> Run:
    """A Run from a row of RUN_COLUMNS, in either store; a cluster's rows may add the node after them."""
    (rid, job, status, progress, message, triggered_by, params, attempt, max_attempts, scheduled_for) = row[:10]
    (run_after, created_at, started_at, finished_at, _duration, total, success, failed, skipped) = row[10:19]
    result, error, exit_code, retry_of, log_tail, updated_at = row[19:25]
    parent_run_id, chain_depth, children, priority = row[25:NODE_COLUMN]
    return Run(
        id=rid,
        job=job,
        status=RunStatus(status),
        triggered_by=TriggerSource(triggered_by),
        created_at=created_at,
        params=json.loads(params),
        attempt=attempt,
        max_attempts=max_attempts,
        progress=progress,
        message=message,
        scheduled_for=scheduled_for,
        run_after=run_after,
        started_at=started_at,
        finished_at=finished_at,
        counts=Counts(total, success, failed, skipped),
        result=None if result is None else json.loads(result),
        error=error,
        exit_code=exit_code,
        retry_of=retry_of,
        log_tail=log_tail or "",
        updated_at=updated_at,
        node=row[NODE_COLUMN] if len(row) > NODE_COLUMN else None,
        parent_run_id=parent_run_id,
        chain_depth=chain_depth or 0,
        children=json.loads(children) if children else [],
        priority=priority,
    )
