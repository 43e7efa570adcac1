"""Shared concurrency groups and priorities: the order startable runs are taken in, and what
the queue view and the metrics show of each group.

A run's place is its effective priority: its priority, plus 1 for every `priority_aging_s` it has
waited since it became ready (its creation, or the end of its run_after), so an old run of a low
priority is not starved by a stream of higher ones. The aging is continuous, so two runs keep
their order while they wait and the order is a fixed key per run: ready_at - priority * aging,
smallest first, then the run id (FIFO within a priority).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jobd.config import GroupConfig, JobConfig, WorkersConfig
from jobd.models import Run, RunStatus


class GroupLimits:
    """The groups in force and the aging of priorities, as the ready queue asks for them."""

    def __init__(self, jobs: Callable[[], Mapping[str, JobConfig]]) -> None:
        self._jobs = jobs
        self.groups: dict[str, GroupConfig] = {}
        self.aging_ms = round(WorkersConfig().priority_aging_s * 1000)

    def set(self, groups: Mapping[str, GroupConfig], priority_aging_s: float) -> None:
        self.groups = dict(groups)
        self.aging_ms = round(priority_aging_s * 1000)

    def groups_of(self, job: str) -> tuple[str, ...]:
        config = self._jobs().get(job)
        return () if config is None else config.groups

    def limit_of(self, group: str) -> int | None:
        config = self.groups.get(group)
        return None if config is None else config.max_concurrency


def ready_at(run: Run) -> int:
    """When the run could first start: its creation, or the end of its run_after."""
    return max(run.created_at, run.run_after or 0)


def order_key(priority: int, ready_at_ms: int, aging_ms: int) -> int:
    """The run's place among startable runs, smallest first (ties: the smaller id). Without
    aging (`aging_ms` 0) the priority alone decides, then the id."""
    if aging_ms <= 0:
        return -priority
    return ready_at_ms - priority * aging_ms


def effective_priority(priority: int, ready_at_ms: int, now_ms: int, aging_ms: int) -> float:
    """What order_key() orders by, as a priority: shown to people, never compared."""
    if aging_ms <= 0:
        return float(priority)
    return priority + max(0, now_ms - ready_at_ms) / aging_ms


def usage(
    groups: Mapping[str, GroupConfig], jobs: Mapping[str, JobConfig], active: Iterable[Run]
) -> list[dict[str, Any]]:
    """Each group's slots: its limit, the runs of its jobs PROCESSING (`running`) and PENDING
    (`waiting`, also those still waiting out a run_after), by group name."""
    running: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    if groups:
        for run in active:
            job = jobs.get(run.job)
            if job is None or not job.groups:
                continue
            counter = running if run.status is RunStatus.PROCESSING else waiting
            for name in job.groups:
                counter[name] += 1
    return [
        {
            "name": name,
            "description": group.description,
            "limit": group.max_concurrency,
            "running": running[name],
            "waiting": waiting[name],
            "jobs": sorted(job.name for job in jobs.values() if name in job.groups),
        }
        for name, group in sorted(groups.items())
    ]


def claim_arguments(
    groups: Mapping[str, GroupConfig], jobs: Iterable[JobConfig]
) -> tuple[list[str], list[str], list[str], list[int]]:
    """The groups as the cluster's claim takes them: (member job, group) pairs as two arrays,
    and each group's limit as two more. Groups no job of this node names are left out."""
    member_jobs: list[str] = []
    member_groups: list[str] = []
    named: set[str] = set()
    for job in jobs:
        for name in job.groups:
            if name in groups:
                member_jobs.append(job.name)
                member_groups.append(name)
                named.add(name)
    names = sorted(named)
    return member_jobs, member_groups, names, [groups[name].max_concurrency for name in names]
