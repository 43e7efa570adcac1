"""The overlap policies as a table: policy x (pending, processing, new runs) → decision."""

from __future__ import annotations

import pytest

from jobd.config import parse_config
from jobd.errors import OverlapConflict
from jobd.lifecycle.admission import Decision, decide, refusal, slot_limit
from jobd.models import Run, RunStatus, TriggerSource

A, R, X = Decision.ADMIT, Decision.REFUSE, Decision.REPLACE

# (pending, processing, count) → the decision of each policy
TABLE = {
    (0, 0, 1): {"skip": A, "buffer_one": A, "queue": A, "allow": A, "replace": A},
    (0, 0, 2): {"skip": R, "buffer_one": R, "queue": A, "allow": A, "replace": A},
    (1, 0, 1): {"skip": R, "buffer_one": R, "queue": A, "allow": A, "replace": X},
    (0, 1, 1): {"skip": R, "buffer_one": A, "queue": A, "allow": A, "replace": X},
    (0, 1, 2): {"skip": R, "buffer_one": R, "queue": A, "allow": A, "replace": X},
    (1, 1, 1): {"skip": R, "buffer_one": R, "queue": A, "allow": A, "replace": X},
    (0, 3, 1): {"skip": R, "buffer_one": A, "queue": A, "allow": A, "replace": X},
    (5, 3, 10): {"skip": R, "buffer_one": R, "queue": A, "allow": A, "replace": X},
}


@pytest.mark.parametrize(
    "policy, pending, processing, count, expected",
    [(policy, *counts, decision) for counts, row in TABLE.items() for policy, decision in row.items()],
)
def test_decision(policy: str, pending: int, processing: int, count: int, expected: Decision) -> None:
    assert decide(policy, pending=pending, processing=processing, count=count) is expected


def run(run_id: int, status: RunStatus) -> Run:
    return Run(id=run_id, job="j", status=status, triggered_by=TriggerSource.API, created_at=0)


def test_a_refusal_names_the_runs_in_the_way() -> None:
    active = [run(3, RunStatus.PROCESSING), run(4, RunStatus.PENDING)]
    skip = refusal("j", "skip", active)
    assert isinstance(skip, OverlapConflict)
    assert skip.detail == "job 'j' already has run 3 PROCESSING" and skip.extra["active_run_ids"] == [3, 4]
    buffer_one = refusal("j", "buffer_one", active)
    assert buffer_one.detail == "job 'j' already has run 4 waiting (overlap=buffer_one)"
    # A batch refused while nothing is active.
    assert refusal("j", "skip", []).detail == "job 'j' allows one run at a time (overlap=skip)"


@pytest.mark.parametrize(
    "overlap, max_concurrency, slots", [("queue", 5, 1), ("allow", 5, 5), ("skip", 1, 1), ("replace", 2, 2)]
)
def test_slots(overlap: str, max_concurrency: int, slots: int) -> None:
    config = parse_config(
        {"jobs": {"j": {"command": ["true"], "overlap": overlap, "max_concurrency": max_concurrency}}}, environ={}
    )
    assert slot_limit(config.jobs["j"]) == slots
