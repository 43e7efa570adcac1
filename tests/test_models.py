"""The run record: its copies, its JSON, its status updates and their schemas, all from one table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from jobd.models import (
    Counts,
    Run,
    RunStatus,
    TriggerSource,
    compact_json,
    json_schema_components,
    run_json_schema,
    status_update,
    status_update_json_schema,
    status_update_of,
)

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
    error="exit code 1: bad",
    exit_code=-9,
    retry_of=6,
    log_tail="the end\n",
    updated_at=1_764_000_002_345,
    node="jobs-2",
    parent_run_id=3,
    chain_depth=2,
    children=[{"job": "load", "run_id": 8}],
    priority=-3,
)
RUNS = [
    BASE,
    FINISHED,
    dataclasses.replace(BASE, progress=100, result=[1, "two"], updated_at=0),  # an int progress, no updated_at
    dataclasses.replace(BASE, result="text", counts=Counts(None, 0, 0, 0), exit_code=0, message=""),
]
OPENAPI = Path(__file__).parent.parent / "jobd" / "web" / "openapi.json"


def test_a_run_as_json():
    assert FINISHED.to_json() == {
        "id": 7,
        "job": "nightly",
        "status": "FAILED",
        "progress": 42.5,
        "message": 'étape 3 "quoted"\nnext',
        "triggered_by": "api",
        "params": {"ü": [1, 2.5, None]},
        "attempt": 2,
        "max_attempts": 3,
        "scheduled_for": "2025-11-24T16:00:00.000Z",
        "run_after": "2025-11-24T16:00:00.999Z",
        "created_at": "2025-11-24T16:00:00.123Z",
        "started_at": "2025-11-24T16:00:01.000Z",
        "finished_at": "2025-11-24T16:00:02.345Z",
        "updated_at": "2025-11-24T16:00:02.345Z",
        "duration_ms": 1345,
        "counts": {"total": 50, "success": 46, "failed": 2, "skipped": 2},
        "result": {"rows": 12, "nested": {"a": "\u2603"}},
        "error": "exit code 1: bad",
        "exit_code": -9,
        "retry_of": 6,
        "node": "jobs-2",
        "parent_run_id": 3,
        "priority": -3,
    }
    assert FINISHED.to_json(with_log=True) == {**FINISHED.to_json(), "log_tail": "the end\n"}
    # Not changed since it was created: updated_at is the creation time.
    assert BASE.to_json()["updated_at"] == BASE.to_json()["created_at"] == "2025-11-24T16:00:00.123Z"


def test_a_status_update():
    assert status_update(FINISHED) == {
        "run_id": 7,
        "job": "nightly",
        "status": "FAILED",
        "progress": 42.5,
        "message": 'étape 3 "quoted"\nnext',
        "counts": {"total": 50, "success": 46, "failed": 2, "skipped": 2},
        "error": "exit code 1: bad",
        "result": {"rows": 12, "nested": {"a": "\u2603"}},
        "attempt": 2,
        "updated_at": "2025-11-24T16:00:02.345Z",
        "parent_run_id": 3,
    }


@pytest.mark.parametrize("run", RUNS)
def test_the_status_update_a_client_reads_off_a_run_is_the_one_a_stream_sends(run):
    # What the client sees when it polls (GET /runs/{id}, through JSON) matches the stream's message.
    message = {"type": "status_update", **status_update(run)}
    assert status_update_of(json.loads(compact_json(run.to_json()))) == json.loads(compact_json(message))


@pytest.mark.parametrize("run", RUNS)
def test_runs_and_their_status_updates_match_their_schemas(run):
    for data, schema in [
        (run.to_json(), run_json_schema()),
        (run.to_json(with_log=True), run_json_schema(with_log=True)),
        ({"type": "status_update", **status_update(run)}, status_update_json_schema()),
    ]:
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(json.loads(compact_json(data)), schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):  # the schemas are closed
        jsonschema.validate({**run.to_json(), "extra": 1}, run_json_schema())


def test_the_schemas_are_those_of_the_api_document():
    components = json.loads(OPENAPI.read_text(encoding="utf-8"))["components"]["schemas"]

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    assert run_json_schema(ref=ref) == components["Run"]
    assert run_json_schema(with_log=True, ref=ref) == components["RunWithLog"]
    for name, schema in json_schema_components().items():
        assert schema == components[name], name


def test_a_copy_has_every_field_and_counts_of_its_own():
    assert all(getattr(FINISHED, f.name) != f.default for f in dataclasses.fields(Run))  # none left to chance
    copy = FINISHED.copy()
    assert copy == FINISHED and copy is not FINISHED
    assert copy.counts == FINISHED.counts and copy.counts is not FINISHED.counts


def test_assign_takes_every_field():
    # FINISHED differs from this run in every field, as from each field's default.
    run = Run(id=8, job="other", status=RunStatus.PROCESSING, triggered_by=TriggerSource.CRON, created_at=1)
    assert all(getattr(run, f.name) != getattr(FINISHED, f.name) for f in dataclasses.fields(Run))
    run.assign(FINISHED)
    assert run == FINISHED
