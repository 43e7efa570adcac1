"""Overlap policies: whether new runs of a job may be created while others are active.

Pure functions over counts, so that any backend (an in-memory table, a database under a per-job
lock) applies them the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from jobd.config import JobConfig
from jobd.errors import OverlapConflict
from jobd.models import Run, RunStatus


class Decision(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"
    REPLACE = "replace"  # admit, and ask the active runs to stop


def decide(policy: str, *, pending: int, processing: int, count: int) -> Decision:
    """The decision for `count` new runs when the job has `pending` and `processing` runs."""
    busy = pending + processing
    if policy == "skip":
        return Decision.REFUSE if busy or count > 1 else Decision.ADMIT
    if policy == "buffer_one":
        return Decision.REFUSE if pending or count > 1 else Decision.ADMIT
    if policy == "replace":
        return Decision.REPLACE if busy else Decision.ADMIT
    return Decision.ADMIT  # queue, allow: the ready queue's slots hold them back


def counts_matter(policy: str) -> bool:
    """Whether decide() can answer anything but ADMIT under `policy`: only then must the job's
    active runs be counted (and, in a cluster, its lock be taken) before creating runs."""
    return policy in ("skip", "buffer_one", "replace")


def refusal(job: str, policy: str, active: Sequence[Run]) -> OverlapConflict:
    """What a refused request is told: which runs stand in the way."""
    ids = [run.id for run in active]
    if policy == "buffer_one":
        waiting = [run.id for run in active if run.status is RunStatus.PENDING]
        detail = f"job {job!r} already has run {waiting[0] if waiting else '?'} waiting (overlap=buffer_one)"
    elif active:
        detail = f"job {job!r} already has run {active[0].id} {active[0].status.value}"
    else:
        detail = f"job {job!r} allows one run at a time (overlap=skip)"
    return OverlapConflict(detail, job=job, active_run_ids=ids)


def slot_limit(job: JobConfig) -> int:
    """How many runs of the job may be PROCESSING at once: overlap=queue runs them one by one."""
    return 1 if job.overlap == "queue" else job.max_concurrency
