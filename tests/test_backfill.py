"""Backfill end to end on both backends: `POST /api/v1/jobs/{name}/backfill` and `jobd backfill`
against a real daemon, across the DST changes of Europe/Berlin in 2026 (spring forward on
29 March at 02:00, fall back on 25 October at 03:00)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import BACKENDS, Harness

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

BERLIN = {"handler": "sample_jobs:noop", "timezone": "Europe/Berlin"}
JOBS = {
    "hourly": {**BERLIN, "schedule": "0 * * * *"},
    "nightly": {**BERLIN, "schedule": "30 2 * * *"},
    "single": {**BERLIN, "schedule": "*/10 * * * *", "handler": "sched_jobs:gated"},  # overlap = skip
    "manual": {"handler": "sample_jobs:noop"},
}

StartDaemon = Callable[..., Awaitable[Harness]]


async def backfill(h: Harness, job: str, expect: int = 202, **body: Any) -> dict[str, Any]:
    response = await h.client.post(f"/api/v1/jobs/{job}/backfill", json=body)
    data = await response.json()
    assert response.status == expect, data
    assert isinstance(data, dict)
    return data


async def test_spring_forward_hourly_and_nightly(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    hourly = await backfill(h, "hourly", **{"from": "2026-03-29T00:00:00+01:00", "to": "2026-03-29T06:00:00+02:00"})
    # Real time: no 02:00 that night; five fires in the five hours.
    assert hourly["fire_times_local"] == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T05:00:00+02:00",
    ]
    assert hourly["fire_times"] == [
        f"2026-03-{day}T{hour}:00:00.000Z" for day, hour in [("28", "23")] + [("29", f"{h:02d}") for h in range(4)]
    ]
    assert [run["scheduled_for"] for run in hourly["runs"]] == hourly["fire_times"]
    assert {run["triggered_by"] for run in hourly["runs"]} == {"catchup"}
    assert hourly["existing"] == [] and hourly["dry_run"] is False

    nightly = await backfill(h, "nightly", **{"from": "2026-03-28T00:00:00+01:00", "to": "2026-03-31T00:00:00+02:00"})
    # Fixed time: the skipped 02:30 fires once, at the first instant after the gap.
    assert nightly["fire_times_local"] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    assert len(nightly["runs"]) == 3
    for run in hourly["runs"] + nightly["runs"]:
        assert (await h.finished(run["id"])).status.value == "COMPLETED"


async def test_fall_back_and_a_second_backfill_makes_nothing(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    body = {"from": "2026-10-25T00:00:00+02:00", "to": "2026-10-25T05:00:00+01:00"}
    first = await backfill(h, "hourly", **body)
    # The repeated hour fires twice (02:00+02:00 and 02:00+01:00): six fires in six hours.
    assert first["fire_times_local"] == [
        "2026-10-25T00:00:00+02:00",
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    assert len(first["runs"]) == 6 and first["existing"] == []
    again = await backfill(h, "hourly", **body)
    assert again["runs"] == [] and again["existing"] == first["fire_times"]
    # An overlapping range makes only the times not made yet.
    wider = await backfill(h, "hourly", **{**body, "to": "2026-10-25T07:00:00+01:00"})
    assert [run["scheduled_for"] for run in wider["runs"]] == ["2026-10-25T04:00:00.000Z", "2026-10-25T05:00:00.000Z"]
    assert wider["existing"] == first["fire_times"]
    nightly = await backfill(h, "nightly", **{"from": "2026-10-24T12:00:00+02:00", "to": "2026-10-26T12:00:00+01:00"})
    assert nightly["fire_times_local"] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    runs = (await h.get_json("/api/v1/runs?job=hourly&limit=100"))["runs"]
    assert len(runs) == 8 and len({run["scheduled_for"] for run in runs}) == 8


async def test_concurrent_identical_backfills_make_each_run_once(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    body = {"from": "2026-10-01T00:00:00Z", "to": "2026-10-02T00:00:00Z"}
    answers = await asyncio.gather(*(backfill(h, "hourly", **body) for _ in range(4)))
    made = [run["scheduled_for"] for answer in answers for run in answer["runs"]]
    assert sorted(made) == answers[0]["fire_times"] and len(made) == 24


async def test_backfill_ignores_the_overlap_policy(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    busy = await h.trigger("single")
    answer = await backfill(h, "single", **{"from": "2026-06-01T10:00:00Z", "to": "2026-06-01T10:30:00Z"})
    assert len(answer["runs"]) == 3  # queued behind the running one, one at a time (max_concurrency 1)
    statuses = {run["status"] for run in (await h.get_json("/api/v1/runs?job=single"))["runs"]}
    assert statuses <= {"PENDING", "PROCESSING"}
    await h.client.post(f"/api/v1/runs/{busy['id']}/cancel")
    for run in answer["runs"]:
        await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


async def test_dry_run_lists_the_times_and_creates_nothing(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    body = {"from": "2026-03-29T00:00:00+01:00", "to": "2026-03-29T04:00:00+02:00", "dry_run": True}
    answer = await backfill(h, "hourly", expect=200, **body)
    assert answer["dry_run"] is True and len(answer["fire_times"]) == 3 and "runs" not in answer
    assert (await h.get_json("/api/v1/runs?job=hourly"))["runs"] == []


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        ({"to": "2026-03-02T00:00:00Z"}, "from", "from is required"),
        ({"from": "2026-03-01T00:00:00", "to": "2026-03-02T00:00:00Z"}, "from", "has no offset"),
        ({"from": "yesterday", "to": "2026-03-02T00:00:00Z"}, "from", "is not an ISO 8601 time"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from", "from must be before to"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2999-01-01T00:00:00Z"}, "to", "must not be in the future"),
        ({"from": "2000-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to", "longer than 3660 days"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "max_runs": 0}, "max_runs", "from 1 to 1000"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "max_runs": "5"}, "max_runs", "from 1 to"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "max_runs": 23}, "max_runs", "more than"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "dry_run": 1}, "dry_run", "true or false"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "runs": 3}, "runs", "unknown field"),
        ({"from": "1969-12-31T00:00:00Z", "to": "1970-01-02T00:00:00Z"}, "from", "before 1970"),
    ],
)
async def test_validation_names_the_field(
    start_daemon: StartDaemon, body: dict[str, Any], field: str, detail: str
) -> None:
    h = await start_daemon(JOBS)
    problem = await backfill(h, "hourly", expect=400, **body)
    assert problem["field"] == field and detail in problem["detail"], problem
    assert (await h.get_json("/api/v1/runs?job=hourly"))["runs"] == []


async def test_exactly_max_runs_is_accepted_and_other_jobs_refused(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    day = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}
    assert len((await backfill(h, "hourly", max_runs=24, **day))["runs"]) == 24
    problem = await backfill(h, "manual", expect=409, **day)
    assert problem["job"] == "manual" and "no schedule" in problem["detail"]
    await backfill(h, "nope", expect=404, **day)


async def test_cli_backfill_and_its_dry_run(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    url = str(h.client.make_url("")).rstrip("/")

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobd",
            "backfill",
            *args,
            "--url",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    span = ("--from", "2026-10-25T00:00:00+02:00", "--to", "2026-10-25T04:00:00+01:00")
    code, out, err = await cli("hourly", *span, "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "hourly: 5 fire time(s) in Europe/Berlin",
        "  2026-10-25T00:00:00+02:00",
        "  2026-10-25T01:00:00+02:00",
        "  2026-10-25T02:00:00+02:00",
        "  2026-10-25T02:00:00+01:00",
        "  2026-10-25T03:00:00+01:00",
    ]
    assert (await h.get_json("/api/v1/runs?job=hourly"))["runs"] == []
    code, out, err = await cli("hourly", *span, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert len(answer["runs"]) == 5 and answer["existing"] == []
    code, out, err = await cli("hourly", *span)
    assert (code, out.splitlines()[0]) == (0, "hourly: 0 run(s) created, 5 fire time(s) already had one")
    # A time without an offset is UTC, as with `jobd check --from`.
    code, out, err = await cli("nightly", "--from", "2026-10-24T12:00:00", "--to", "2026-10-25T12:00", "--dry-run")
    assert out.splitlines()[1:] == ["  2026-10-25T02:30:00+02:00"], err
    code, out, err = await cli("hourly", "--from", "2026-10-25", "--to", "2026-10-24", "--dry-run")
    assert code == 1 and err.startswith("jobd: 400 Bad request: from must be before to"), err
    code, out, err = await cli("hourly", "--from", "soon", "--to", "2026-10-24")
    assert (code, err) == (2, "jobd: --from 'soon' is not an ISO 8601 time\n")
