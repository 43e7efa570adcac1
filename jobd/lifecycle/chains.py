"""Chains: what a run's end triggers (its job's on_success, on_failure, on_finish).

A run that has ended for good (no retry follows it) makes one run of each job its chain names,
`triggered_by = "chain"`, with `parent_run_id` and the params `{"parent": {...}}` under the
child job's own `chain_params`. Each child goes through its own job's overlap policy; a refusal
is recorded in the parent's `children` instead of a run, and so is a child that would pass the
parent job's `max_chain_depth`. The backends write the children in the transaction that writes
the parent's end (transitions.py; cluster/chaining.py): a crash loses both or neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jobd.config import JobConfig
from jobd.models import Run, RunStatus, TriggerSource


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """One job a parent's end names: the child to make, or why none is made."""

    job: str
    refused: str | None = None  # why no child was made (before its overlap policy is asked)


def outcome(chain_partial_as: str, status: RunStatus) -> str | None:
    """ "success", "failure" or None (CANCELLED: only on_finish fires) for a terminal status."""
    if status is RunStatus.COMPLETED:
        return "success"
    if status is RunStatus.PARTIAL:
        return chain_partial_as
    if status is RunStatus.FAILED:
        return "failure"
    return None


def links(parent_job: JobConfig, parent: Run, jobs: Mapping[str, JobConfig]) -> list[Link]:
    """The jobs a run of `parent_job` that ended as `parent` (its final copy) triggers, each once."""
    chain = parent_job.chain
    named: list[str] = []
    kind = outcome(chain.partial_as, parent.status)
    if kind == "success":
        named.extend(chain.on_success)
    elif kind == "failure":
        named.extend(chain.on_failure)
    named.extend(chain.on_finish)
    made: list[Link] = []
    for name in dict.fromkeys(named):  # a job named by two keys runs once
        if name not in jobs:
            made.append(Link(name, f"job {name!r} is no longer configured"))
        elif parent.chain_depth + 1 > chain.max_depth:
            made.append(
                Link(name, f"max_chain_depth reached: run {parent.id} already has {parent.chain_depth} ancestors")
            )
        else:
            made.append(Link(name))
    return made


def parent_params(parent: Run) -> dict[str, Any]:
    return {"id": parent.id, "job": parent.job, "status": parent.status.value, "result": parent.result}


def child_run(parent: Run, job: JobConfig, *, run_id: int, now: int) -> Run:
    """A PENDING run of `job` made by `parent`'s end: `{"parent": ...}` under its chain_params."""
    return Run(
        id=run_id,
        job=job.name,
        status=RunStatus.PENDING,
        triggered_by=TriggerSource.CHAIN,
        created_at=now,
        updated_at=now,
        params=job.params.with_defaults({"parent": parent_params(parent), **job.chain.params}),
        max_attempts=job.retries + 1,
        parent_run_id=parent.id,
        chain_depth=parent.chain_depth + 1,
        priority=job.priority,
    )


def made(child: Run) -> dict[str, Any]:
    """A child in its parent's `children` record."""
    return {"job": child.job, "run_id": child.id}


def skipped(job: str, reason: str) -> dict[str, Any]:
    """A job the parent's end named that got no run, and why."""
    return {"job": job, "run_id": None, "reason": reason}


def children_json(children: list[dict[str, Any]], runs: Mapping[int, Run]) -> list[dict[str, Any]]:
    """The `children` of GET /runs/{id}: each child's current status ("skipped" for a job that got
    no run; null for a child that retention has deleted since)."""
    shown = []
    for child in children:
        run_id = child.get("run_id")
        if run_id is None:
            shown.append({"id": None, "job": child["job"], "status": "skipped", "reason": child.get("reason")})
        else:
            run = runs.get(run_id)
            shown.append(
                {"id": run_id, "job": child["job"], "status": run.status.value if run else None, "reason": None}
            )
    return shown


def log_children(log: Any, parent: Run) -> None:
    """Once the parent's end is committed: a line per job its chain named."""
    for child in parent.children:
        if child.get("run_id") is None:
            log.info("chain_skipped", run_id=parent.id, job=parent.job, child_job=child["job"], reason=child["reason"])
        else:
            log.info("run_chained", run_id=child["run_id"], job=child["job"], parent_run_id=parent.id)
