"""The run backend: what must be shared between nodes, behind one interface.

It owns creating runs (under the job's overlap policy and idempotency key), claiming the next
startable run (FIFO, each job held to its slots), the PENDING → PROCESSING move and the terminal
moves with their commit (a retry committed with the failure it repeats), cron fire records, pause
state, cancel requests, and the feed of committed changes that the event bus publishes.

`LocalBackend` (local.py) is one process on SQLite: an in-memory ready queue, group commit. A
database that several processes share can implement the same interface: a claim in one statement,
admission under a per-job lock, fires deduplicated by their key, an events table tailed into the
feed, cancel requests sent to the node that runs the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from jobd.config import GroupConfig, JobConfig
from jobd.models import Run, RunStatus, TriggerSource
from jobd.store.base import DeletedRuns, JobState, RunFilter


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """One run to create: what the API, the scheduler and retries ask for."""

    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None
    run_after: int | None = None  # epoch ms: the run stays PENDING until then (a trigger's run_at)
    priority: int | None = None  # None: the job's priority


FinishedHook = Callable[[JobConfig, Run, JobState, int], None]


class Feed(Protocol):
    """Where committed changes go (the event bus)."""

    def publish(
        self,
        type_: str,
        data: dict[str, Any],
        *,
        run_id: int | None = None,
        job: str | None = None,
        status: str | None = None,
        coalescible: bool = False,
    ) -> Any: ...

    def wants_logs(self, run_id: int) -> bool:
        """Whether anyone follows the run's output (log lines are not built for nobody)."""
        ...


class RunBackend(Protocol):
    """Creating, claiming, moving and announcing runs. Every change is committed before it is
    published on the feed, so a subscriber never sees a state the store does not have."""

    accepting: bool  # False once a stop began: creations are refused (503)
    clock: Callable[[], int]  # epoch ms

    # -- start and stop ----------------------------------------------------------------------------

    def feed_to(self, feed: Feed) -> None:
        """Publish committed changes there (set before open())."""

    def on_cancel(self, stop: Callable[[int], None]) -> None:
        """`stop(run_id)` is called when a run this process executes is asked to stop."""

    def on_finished(self, hook: FinishedHook) -> None:
        """`hook(job, run, job_state, previous_failures)` after each run's end is committed, in the
        process that committed it (alerts, metrics)."""

    async def open(self, *, interrupted: str) -> None:
        """Restore state; runs left PROCESSING by a crash end with `interrupted` (and are retried
        as their job's on_interrupt says); PENDING ones are queued again."""

    def reconfigure(self, jobs: Mapping[str, JobConfig]) -> None:
        """New job definitions (a reload); runs not started yet follow them."""

    def set_groups(self, groups: Mapping[str, GroupConfig], priority_aging_s: float) -> None:
        """The shared concurrency groups and the aging of priorities (at start, and the groups
        again on a reload): new starts follow them."""

    async def wait_settled(self) -> None:
        """Until every terminal state handed in is committed and announced."""

    # -- creating ----------------------------------------------------------------------------------

    async def create(
        self,
        job: str,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str | None = None,
        scheduled_for: int | None = None,
    ) -> list[Run]:
        """Create runs under the overlap policy (the job's, or `overlap`); returns once committed.
        Raises JobNotFound, OverlapConflict, Unavailable."""
        ...

    async def fire(
        self, job: str, scheduled_for: int, *, triggered_by: TriggerSource, now: int, overlap: str | None = None
    ) -> Run | None:
        """Record the cron fire (job, scheduled_for) with the run it created, or with its skip
        (None; `now` is the skip's time, `fire_skipped` is published). `overlap` replaces the
        job's policy (a run_all catch-up admits every missed fire)."""
        ...

    async def exclude_fire(self, job: str, scheduled_for: int, *, now: int, excluded_by: str) -> None:
        """Record the cron fire (job, scheduled_for) as skipped with reason `excluded`: the job's
        calendars or active period leave it out (`excluded_by` says which); `fire_skipped` is
        published. In a cluster the fire is recorded once, whichever node gets there first."""

    async def backfill(self, job: str, times: Sequence[int]) -> tuple[list[Run], list[int]]:
        """A run (triggered_by catchup, admitted whatever the overlap policy) for each of `times`
        that the job has no fire or run for yet. Returns the runs made, once committed, and the
        times left out as existing."""
        ...

    async def retry(self, run_id: int) -> Run:
        """A new run repeating a finished one (an operator's retry)."""
        ...

    # -- executing ---------------------------------------------------------------------------------

    async def claim(self) -> tuple[Run, JobConfig]:
        """The next startable run, moved to PROCESSING (its commit need not be awaited), and its job."""
        ...

    def release(self, run: Run) -> None:
        """The worker is done with a claimed run: its job's slot is free."""

    def cancel_requested(self, run_id: int) -> bool:
        """Whether an operator asked to stop the run (any other stop is an interruption)."""
        ...

    def report(self, run: Run) -> None:
        """The run's progress, counts or message changed (written lazily, announced coalesced)."""

    def report_log(self, run: Run, line: str, stream: str) -> None:
        """A line of the run's output, for those following it."""

    def finish(
        self,
        run: Run,
        status: RunStatus,
        *,
        error: str | None = None,
        exit_code: int | None = None,
        result: Any = None,
        log_tail: str | None = None,
    ) -> asyncio.Future[None]:
        """Record a terminal state (and the retry it calls for); done once committed. Raises
        InvalidTransition for a run that has already finished."""
        ...

    def interrupt(self, run: Run, reason: str) -> asyncio.Future[None]:
        """A run stopped before its end by jobd itself: FAILED, re-queued if its job says so."""
        ...

    # -- operator actions --------------------------------------------------------------------------

    async def cancel(self, run_id: int, *, reason: str = "cancelled", wait: bool = True) -> Run:
        """Cancel a run; with wait=False a running one may still be stopping on return."""
        ...

    async def set_paused(self, job: str, paused: bool) -> None:
        """Pause or resume the job's schedule; returns once committed."""

    async def wait_finished(self, run: Run) -> None:
        """Until the run's terminal state is committed."""

    async def delete_finished(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns:
        """Retention: delete finished runs older than their status's cutoff (one batch)."""
        ...

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int:
        """Retention: forget idempotency keys created before then (one batch)."""
        ...

    # -- reading -----------------------------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, JobConfig]: ...

    def job(self, name: str) -> JobConfig:
        """Raises JobNotFound."""
        ...

    @property
    def active(self) -> Mapping[int, Run]:
        """Runs not finished yet, with their latest progress."""
        ...

    def active_of(self, job: str) -> list[Run]: ...

    def is_running(self, job: str) -> bool: ...

    def job_state(self, job: str) -> JobState: ...

    @property
    def job_states(self) -> Mapping[str, JobState]: ...

    async def get(self, run_id: int) -> Run:
        """Raises RunNotFound."""
        ...

    async def list(self, where: RunFilter, *, limit: int, offset: int) -> tuple[list[Run], int]: ...

    async def last_runs_of(self, jobs: Iterable[str]) -> dict[str, Run]: ...

    def queued_count(self) -> int: ...

    def processing_count(self) -> int: ...

    def queue_snapshot(self, workers_total: int) -> dict[str, Any]: ...
