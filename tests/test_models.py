"""The run record: its copies and its JSON text."""

from __future__ import annotations

import dataclasses

import pytest

from jobd.models import Counts, Run, RunStatus, TriggerSource, compact_json

BASE = Run(id=7, job="nightly", status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=1_764_000_000_123)
FINISHED = dataclasses.replace(
    BASE,
    status=RunStatus.FAILED,
    progress=42.5,
    message='étape 3 "quoted"\nnext',
    params={"ü": [1, 2.5, None]},
    attempt=2,
    max_attempts=3,
    scheduled_for=1_764_000_000_000,
    run_after=1_764_000_000_999,
    started_at=1_764_000_001_000,
    finished_at=1_764_000_002_345,
    counts=Counts(50, 46, 2, 2),
    result={"rows": 12, "nested": {"a": "\u2603"}},
    error="exit code 1: \ud800 bad",
    exit_code=-9,
    retry_of=6,
    log_tail="ignored",
    updated_at=1_764_000_002_345,
)


@pytest.mark.parametrize(
    "run",
    [
        BASE,
        FINISHED,
        dataclasses.replace(BASE, progress=100, result=[1, "two"], updated_at=0),  # an int progress, no updated_at
        dataclasses.replace(BASE, progress=float("nan"), result="text", counts=Counts(None, 0, 0, 0)),
        dataclasses.replace(BASE, progress=float("inf"), result=0, exit_code=0, message=""),
    ],
)
def test_the_json_text_of_a_run_is_its_json_encoded(run):
    assert run.to_json_text() == compact_json(run.to_json())


def test_a_copy_has_every_field_and_counts_of_its_own():
    copy = FINISHED.copy()
    assert copy == FINISHED and copy is not FINISHED
    assert copy.counts == FINISHED.counts and copy.counts is not FINISHED.counts


def test_assign_takes_every_field():
    run = BASE.copy()
    run.assign(FINISHED)
    assert run == FINISHED
