"""The HTTP API through aiohttp's test client, against a real daemon and a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import re
import sqlite3

import pytest
import sample_jobs
import sched_jobs
from conftest import BACKENDS, PYTHON, SCRIPTS, sqlite_only, wait_for
from runner_helpers import strays, wait_gone  # noqa: F401 (strays is a fixture)

from jobd import runner
from jobd.config import load_config
from jobd.lifecycle import INTERRUPTED
from jobd.models import InvalidTransition, RunStatus, now_ms, parse_iso_ms

NOOP = {"handler": "sample_jobs:noop"}
SLEEPY = {"handler": "sample_jobs:sleepy", "overlap": "allow", "max_concurrency": 10}


async def test_trigger_runs_to_completed_and_is_stored(start_daemon):
    h = await start_daemon({"noop": NOOP})
    run = await h.trigger("noop", {"x": 1})
    assert run["status"] == "PENDING"
    assert run["triggered_by"] == "api"
    assert run["params"] == {"x": 1}
    done = await h.finished(run["id"])
    assert done.status is RunStatus.COMPLETED
    assert done.result == {"echo": {"x": 1}}
    body = await h.get_json(f"/api/v1/runs/{run['id']}")
    assert body["run"]["status"] == "COMPLETED"
    assert body["run"]["progress"] == 100
    assert body["run"]["duration_ms"] is not None
    assert body["run"]["created_at"].endswith("Z")


async def test_a_trigger_the_store_cannot_commit_is_503_and_leaves_nothing(start_daemon, backend):
    sqlite_only(backend, "blocks the SQLite file")
    """Another connection holds the store's write lock past the busy timeout: the trigger is a
    retryable 503 problem, nothing is queued, and the same trigger succeeds once the lock is gone."""
    h = await start_daemon({"noop": NOOP})
    blocker = sqlite3.connect(h.daemon.config.store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        refused = await h.trigger("noop", expect=503)
        assert refused["type"] == "urn:jobd:problem:store-unavailable" and "locked" in refused["detail"]
    finally:
        blocker.rollback()
        blocker.close()
    queue = await h.get_json("/api/v1/queue")
    assert (queue["pending"], queue["processing"], sum(queue["counts"].values())) == (0, 0, 0)
    done = await h.finished((await h.trigger("noop"))["id"])
    assert done.status is RunStatus.COMPLETED


ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# The fields the core issue lists, plus run_after and updated_at (README, "HTTP API").
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

RUN_FIELDS = {
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
    "updated_at",
    "duration_ms",
    "counts",
    "result",
    "error",
    "exit_code",
    "retry_of",
    "node",
    "parent_run_id",
    "priority",
}


async def test_run_fields_are_exactly_the_listed_ones_with_utc_millisecond_times(start_daemon):
    h = await start_daemon({"steps": {"command": [PYTHON, str(SCRIPTS / "api_progress.py")]}})
    run = await h.trigger("steps", {"who": "world"})
    assert set(run) == RUN_FIELDS
    await h.finished(run["id"])
    done = (await h.get_json(f"/api/v1/runs/{run['id']}"))["run"]
    assert set(done) == RUN_FIELDS | {"log_tail", "children"}
    listed = (await h.get_json("/api/v1/runs"))["runs"][0]
    assert set(listed) == RUN_FIELDS
    for name in ("created_at", "started_at", "finished_at", "updated_at"):
        assert ISO_MS_UTC.match(done[name]), (name, done[name])
    assert done["started_at"] <= done["finished_at"]
    assert done["duration_ms"] == round(parse_iso_ms(done["finished_at"]) - parse_iso_ms(done["started_at"]))
    assert set(done["counts"]) == {"total", "success", "failed", "skipped"}
    assert (done["status"], done["progress"], done["attempt"], done["max_attempts"]) == ("PARTIAL", 100.0, 1, 1)
    assert (done["exit_code"], done["error"], done["retry_of"], done["scheduled_for"]) == (0, None, None, None)
    assert done["triggered_by"] == "api" and done["params"] == {"who": "world"}


async def test_unknown_job_is_404_problem(start_daemon):
    h = await start_daemon({"noop": NOOP})
    response = await h.client.post("/api/v1/jobs/nope/trigger")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == 404 and "nope" in problem["detail"]


async def test_malformed_json_and_wrong_types_are_400(start_daemon):
    h = await start_daemon({"noop": NOOP})
    hostile = (
        b"{not json",
        b"[1, 2]",
        json.dumps({"params": [1]}).encode(),
        json.dumps({"bogus": 1}).encode(),
        b'{"params": {"x": NaN}}',
        b'{"params": {"x": Infinity}}',
        b'{"params": {"x": -Infinity}}',
        b'{"params": {"x": 1e999}}',
        b'{"params": {"x": [-1e400]}}',  # overflow to infinity
        b'{"params": {"x": ' + b"9" * 5000 + b"}}",  # longer than int() takes
        b'{"params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",  # deeper than the parser goes
        b'{"params": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",  # parses, but deeper than the limit
        b"\xff\xfe{}",
        b'{"overlap": []}',
        b'{"triggered_by": {}}',
        b'{"runs": [{"params": 3}]}',
    )
    for body in hostile:
        response = await h.client.post("/api/v1/jobs/noop/trigger", data=body)
        assert response.status == 400, body[:60]
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == 400
    nested = {"x": [[[[{"y": [1, 2, {"z": None}]}]]]]}
    assert (await h.trigger("noop", nested))["params"] == nested
    for query in (
        "limit=0",
        "limit=501",
        "limit=abc",
        "limit=-1",
        "limit=1e3",
        "limit=%EF%BC%95",
        "offset=%D9%A3",
        "offset=-5",
        "limit=" + "9" * 5000,
        "status=DONE",
        "since=yesterday",
        "triggered_by=robot",
        "cursor=!!!",
    ):
        response = await h.client.get(f"/api/v1/runs?{query}")
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"


async def test_a_body_that_does_not_decode_is_400(start_daemon):
    # aiohttp inflates a compressed body as it is read; one that does not inflate is the caller's error.
    h = await start_daemon({"noop": NOOP})
    for encoding in ("gzip", "deflate"):
        response = await h.client.post(
            "/api/v1/jobs/noop/trigger",
            data=b"not compressed at all",
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        )
        assert response.status == 400, encoding
        assert response.content_type == "application/problem+json"
        assert "Content-Encoding" in (await response.json())["detail"]
    response = await h.client.post("/api/v1/tickets", data=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    response = await h.client.post(
        "/api/v1/jobs/noop/trigger", data=gzip.compress(b'{"params": {"z": 1}}'), headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 202 and (await response.json())["run"]["params"] == {"z": 1}


async def test_a_handler_reporting_lone_surrogates_still_finishes(start_daemon):
    # Text no UTF-8 can hold reaches the store escaped, so the run's end is committed as usual.
    h = await start_daemon({"odd": {"handler": "sample_jobs:surrogates", "overlap": "allow"}})
    done = await h.finished((await h.trigger("odd"))["id"], timeout=5)
    assert (done.status, done.message) == (RunStatus.COMPLETED, "step \\udcff")
    assert done.log_tail == "lone \\ud800 here\n"
    failed = await h.finished((await h.trigger("odd", {"fail": True}))["id"], timeout=5)
    assert (failed.status, failed.error) == (RunStatus.FAILED, "ValueError: bad \\udcff")
    assert "ValueError: bad \\udcff" in (await (await h.client.get(f"/api/v1/runs/{failed.id}/log")).text())


async def test_body_over_limit_is_413(start_daemon):
    h = await start_daemon({"noop": NOOP}, server={"max_body_bytes": 2048})
    response = await h.client.post("/api/v1/jobs/noop/trigger", data=b'{"params": {"x": "' + b"a" * 5000 + b'"}}')
    assert response.status == 413
    assert response.content_type == "application/problem+json"


async def test_unknown_route_and_method_are_problems(start_daemon):
    h = await start_daemon({"noop": NOOP})
    response = await h.client.get("/api/v1/nothing-here")
    assert response.status == 404 and response.content_type == "application/problem+json"
    response = await h.client.delete("/api/v1/jobs")
    assert response.status == 405 and response.content_type == "application/problem+json"
    response = await h.client.get("/api/v1/runs/abc")
    assert response.status == 404 and response.content_type == "application/problem+json"
    response = await h.client.get("/api/v1/runs/999999")
    assert response.status == 404 and response.content_type == "application/problem+json"
    response = await h.client.get("/api/v1/runs/%C2%B2")  # "²" is a digit to str.isdigit(), not to int()
    assert response.status == 404 and response.content_type == "application/problem+json"


async def test_overlap_skip_gives_409(start_daemon):
    h = await start_daemon({"slow": {"handler": "sample_jobs:sleepy"}})
    first = await h.trigger("slow", {"seconds": 30})
    problem = await h.trigger("slow", expect=409)
    assert problem["status"] == 409 and str(first["id"]) in problem["detail"]
    # A manual trigger may override the policy for itself.
    second = await h.trigger("slow", {"seconds": 30}, overlap="allow")
    assert second["id"] != first["id"]
    for run_id in (first["id"], second["id"]):
        response = await h.client.post(f"/api/v1/runs/{run_id}/cancel")
        assert response.status == 200


async def test_idempotency_key_returns_the_same_run(start_daemon):
    h = await start_daemon({"noop": {**NOOP, "overlap": "allow"}})
    headers = {"Idempotency-Key": "order-42"}
    first, second = await asyncio.gather(
        h.trigger("noop", {"a": 1}, headers=headers), h.trigger("noop", {"a": 1}, headers=headers)
    )
    assert first["id"] == second["id"]
    await h.finished(first["id"])
    third = await h.trigger("noop", {"a": 1}, headers=headers)
    assert third["id"] == first["id"]
    other = await h.trigger("noop", headers={"Idempotency-Key": "order-43"})
    assert other["id"] != first["id"]
    page = await h.get_json("/api/v1/runs?job=noop")
    assert page["pagination"]["total"] == 2
    # Any UTF-8 text is a key; bytes that are not UTF-8 are a 400, as the header's own problem.
    assert (await h.trigger("noop", headers={"Idempotency-Key": "café-1"}))["id"] > other["id"]
    server = h.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/v1/jobs/noop/trigger HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Idempotency-Key: \xb2\xff\r\nContent-Length: 0\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Idempotency-Key" in answer, answer[:300]


async def test_an_idempotency_key_holds_for_24_hours_per_job(start_daemon):
    h = await start_daemon({"noop": {**NOOP, "overlap": "allow"}, "other": {**NOOP, "overlap": "allow"}})
    now = [now_ms()]
    h.daemon.runs.clock = lambda: now[0]  # the run table's injectable clock
    key = {"Idempotency-Key": "report-2026-11-23"}
    first = await h.trigger("noop", headers=key)
    await h.finished(first["id"])
    assert (await h.trigger("other", headers=key))["id"] != first["id"]  # keys belong to a job
    now[0] += 24 * 3600 * 1000 - 1
    assert (await h.trigger("noop", headers=key))["id"] == first["id"]
    now[0] += 2
    later = await h.trigger("noop", headers=key)  # a day has passed: a new run, which the key now names
    assert later["id"] != first["id"]
    assert (await h.trigger("noop", headers=key))["id"] == later["id"]
    assert (await h.get_json("/api/v1/runs?job=noop"))["pagination"]["total"] == 2


async def test_list_filters_pagination_and_statistics(start_daemon):
    h = await start_daemon(
        {"noop": {**NOOP, "overlap": "allow"}, "bad": {"handler": "sample_jobs:fails", "overlap": "allow"}}
    )
    ids = [(await h.trigger("noop"))["id"] for _ in range(5)] + [(await h.trigger("bad"))["id"] for _ in range(2)]
    for run_id in ids:
        await h.finished(run_id)
    page = await h.get_json("/api/v1/runs?limit=3")
    assert [r["id"] for r in page["runs"]] == sorted(ids, reverse=True)[:3]
    assert page["pagination"].items() >= {"total": 7, "limit": 3, "offset": 0, "has_more": True}.items()
    page = await h.get_json("/api/v1/runs?limit=3&offset=6")
    assert page["pagination"]["has_more"] is False and len(page["runs"]) == 1
    failed = await h.get_json("/api/v1/runs?status=FAILED")
    assert {r["job"] for r in failed["runs"]} == {"bad"} and failed["pagination"]["total"] == 2
    assert failed["runs"][0]["error"] == "ValueError: boom"
    by_job = await h.get_json("/api/v1/runs?job=noop&status=completed,failed")
    assert by_job["pagination"]["total"] == 5
    assert page["statistics"]["runs"] == 7
    assert page["statistics"]["failed_runs"] == 2
    assert (await h.get_json("/api/v1/runs?triggered_by=cron"))["pagination"]["total"] == 0
    future = await h.get_json("/api/v1/runs?since=2999-01-01T00:00:00Z")
    assert future["runs"] == []
    middle = (await h.get_json(f"/api/v1/runs/{ids[3]}"))["run"]["created_at"]
    before = await h.get_json(f"/api/v1/runs?until={middle}&limit=500")
    after = await h.get_json(f"/api/v1/runs?since={middle}&limit=500")
    assert {r["id"] for r in before["runs"]} | {r["id"] for r in after["runs"]} == set(ids)
    assert all(r["created_at"] < middle for r in before["runs"]) and ids[3] in {r["id"] for r in after["runs"]}
    assert before["pagination"]["total"] == len(before["runs"])


async def test_last_run_is_the_newest_run_not_the_last_to_finish(start_daemon, make_config):
    jobs = {
        "later": {"handler": "sample_jobs:sleepy", "overlap": "allow", "max_concurrency": 5},
        "blocker": {"handler": "sample_jobs:sleepy", "on_interrupt": "fail"},
    }
    h = await start_daemon(jobs)
    await h.get_json("/api/v1/runs/last?job=later", expect=404)
    await h.get_json("/api/v1/runs/last", expect=400)
    slow = await h.trigger("later", {"seconds": 30})
    quick = await h.trigger("later", {"seconds": 0})
    await h.finished(quick["id"])
    assert (await h.get_json("/api/v1/runs/last?job=later"))["run"]["id"] == quick["id"]
    newest = await h.trigger("later", {"seconds": 30})
    await h.client.post(f"/api/v1/runs/{slow['id']}/cancel")  # an older run that ends after the newest began
    assert (await h.get_json("/api/v1/runs/last?job=later"))["run"]["id"] == newest["id"]
    assert (await h.get_json("/api/v1/jobs/later"))["job"]["last_run"]["id"] == newest["id"]
    # After a restart too, where the newest run is one left PENDING (behind a busy worker).
    await h.client.post(f"/api/v1/runs/{newest['id']}/cancel")
    await h.client.close()
    h = await start_daemon(config=make_config(jobs, workers={"concurrency": 1}))
    await h.trigger("blocker", {"seconds": 30})
    await wait_for(lambda: h.daemon.pool.busy == 1)
    waiting = await h.trigger("later", {"seconds": 30})
    await h.client.close()
    h = await start_daemon(config=make_config(jobs))
    last = (await h.get_json("/api/v1/runs/last?job=later"))["run"]
    assert last["id"] == waiting["id"]
    assert (await h.get_json("/api/v1/jobs/later"))["job"]["last_run"]["id"] == waiting["id"]


async def test_cancel_pending_and_running(start_daemon):
    h = await start_daemon({"slow": SLEEPY}, workers={"concurrency": 1})
    running = await h.trigger("slow", {"seconds": 30})
    waiting = await h.trigger("slow", {"seconds": 30})
    await wait_for(lambda: h.daemon.runs.active[running["id"]].status is RunStatus.PROCESSING)
    response = await h.client.post(f"/api/v1/runs/{waiting['id']}/cancel")
    assert response.status == 200
    cancelled = (await response.json())["run"]
    # It never started: no start time and no duration, only an end.
    assert (cancelled["status"], cancelled["started_at"], cancelled["duration_ms"]) == ("CANCELLED", None, None)
    assert cancelled["finished_at"] is not None
    response = await h.client.post(f"/api/v1/runs/{running['id']}/cancel")
    body = await response.json()
    assert response.status == 200 and body["run"]["status"] == "CANCELLED"
    assert body["run"]["started_at"] is not None and body["run"]["duration_ms"] >= 0
    stored = await h.daemon.store.get_run(running["id"])
    assert stored.status is RunStatus.CANCELLED and stored.finished_at is not None
    response = await h.client.post(f"/api/v1/runs/{running['id']}/cancel")
    assert response.status == 409


async def test_retry_endpoint(start_daemon):
    h = await start_daemon({"bad": {"handler": "sample_jobs:fails", "overlap": "allow"}, "slow": SLEEPY})
    run = await h.trigger("bad")
    await h.finished(run["id"])
    response = await h.client.post(f"/api/v1/runs/{run['id']}/retry")
    assert response.status == 202
    retry = (await response.json())["run"]
    assert retry["retry_of"] == run["id"] and retry["triggered_by"] == "retry"
    slow = await h.trigger("slow", {"seconds": 30})
    response = await h.client.post(f"/api/v1/runs/{slow['id']}/retry")
    assert response.status == 409
    await h.client.post(f"/api/v1/runs/{slow['id']}/cancel")


async def test_failed_run_is_retried_with_exponential_backoff(start_daemon):
    h = await start_daemon({"bad": {"handler": "sample_jobs:fails", "retries": 2, "retry_backoff_s": 0.2}})
    first = await h.trigger("bad")
    await h.finished(first["id"])
    chain = [first["id"]]
    for attempt in (2, 3):
        retry = await wait_for(
            lambda: next((r for r in h.daemon.runs.active.values() if r.retry_of == chain[-1]), None) or None
        )
        assert retry.triggered_by.value == "retry" and retry.status is RunStatus.PENDING
        # 200 ms doubled per attempt, ±20 %: the ranges do not overlap, so the second wait is twice the first.
        base, run_after = 200 * 2 ** (attempt - 2), retry.run_after
        assert 0.8 * base - 1 <= run_after - retry.created_at <= 1.2 * base + 1
        stored = await h.finished(retry.id)
        assert stored.status is RunStatus.FAILED and stored.attempt == attempt
        assert stored.started_at >= run_after  # it waited out its backoff
        chain.append(retry.id)
    runs = (await h.get_json("/api/v1/runs?job=bad"))["runs"]
    assert [(r["attempt"], r["retry_of"]) for r in sorted(runs, key=lambda r: r["id"])] == list(
        zip([1, 2, 3], [None, *chain[:-1]])
    )
    assert all(r["max_attempts"] == 3 and r["status"] == "FAILED" for r in runs)
    assert h.daemon.runs.job_state("bad").consecutive_failures == 3


async def test_workers_take_runs_in_the_order_they_were_accepted(start_daemon):
    record = {"handler": "sample_jobs:record", "overlap": "allow", "max_concurrency": 10}
    h = await start_daemon({"a": record, "b": record}, workers={"concurrency": 1})
    sample_jobs.started_order.clear()
    triggers = [h.trigger("ab"[i % 2], {"i": i}) for i in range(8)]
    ids = [run["id"] for run in await asyncio.gather(*triggers)]
    for run_id in ids:
        await h.finished(run_id)
    by_id = [run["params"]["i"] for run in sorted((await h.get_json("/api/v1/runs"))["runs"], key=lambda r: r["id"])]
    assert sample_jobs.started_order == by_id  # started in the order they were accepted (their ids)


async def test_max_concurrency_is_honoured(start_daemon):
    h = await start_daemon({"slow": {**SLEEPY, "max_concurrency": 2}}, workers={"concurrency": 4})
    runs = [await h.trigger("slow", {"seconds": 30}) for _ in range(4)]
    await wait_for(lambda: sum(r.status is RunStatus.PROCESSING for r in h.daemon.runs.active.values()) == 2)
    # Free workers remain, yet the job's limit holds the other two back.
    assert h.daemon.pool.busy == 2
    await h.client.post(f"/api/v1/runs/{runs[0]['id']}/cancel")
    await wait_for(lambda: h.daemon.runs.active[runs[2]["id"]].status is RunStatus.PROCESSING)
    assert h.daemon.runs.active[runs[3]["id"]].status is RunStatus.PENDING
    for run in runs[1:]:
        await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


async def test_progress_protocol_from_a_command(start_daemon):
    h = await start_daemon({"steps": {"command": [PYTHON, str(SCRIPTS / "api_progress.py")]}})
    run = await h.trigger("steps")
    done = await h.finished(run["id"])
    assert done.status is RunStatus.PARTIAL  # the script reports failed=2
    assert done.counts.total == 50 and done.counts.failed == 2
    assert done.result == {"any": "json"}
    assert "plain log line" in done.log_tail
    log = await h.client.get(f"/api/v1/runs/{run['id']}/log")
    assert log.status == 200 and "plain log line" in await log.text()


async def test_the_log_of_a_running_run_is_readable_while_it_runs(start_daemon):
    h = await start_daemon({"chatty": {"shell": "echo first line; echo oops >&2; exec sleep 30"}})
    run = await h.trigger("chatty")

    async def logged() -> str:
        response = await h.client.get(f"/api/v1/runs/{run['id']}/log")
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
        return text if "[stderr] oops" in text else ""

    assert (await wait_for(logged)).splitlines() == ["first line", "[stderr] oops"]
    live = (await h.get_json(f"/api/v1/runs/{run['id']}"))["run"]
    assert live["status"] == "PROCESSING" and live["log_tail"] == "first line\n[stderr] oops\n"
    await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_stopping_a_command_run_kills_its_whole_process_group(start_daemon, strays, how):
    # The script leaves a grandchild that ignores SIGTERM; SIGKILL after the grace ends it too.
    h = await start_daemon(
        {
            "tree": {
                "command": ["/bin/sh", str(SCRIPTS / "grandchild.sh")],
                **({"timeout_s": 1.0} if how == "timeout" else {}),
            }
        }
    )
    run = await h.trigger("tree")

    async def pids() -> dict[str, int]:
        text = await (await h.client.get(f"/api/v1/runs/{run['id']}/log")).text()
        found = dict(line.split() for line in text.splitlines() if line.startswith(("main ", "grandchild ")))
        return {name: int(pid) for name, pid in found.items()} if len(found) == 2 else {}

    found = await wait_for(pids)
    strays.extend(found.values())
    if how == "cancel":
        response = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status == 200 and (await response.json())["run"]["status"] == "CANCELLED"
    done = await h.finished(run["id"])
    assert done.status is (RunStatus.CANCELLED if how == "cancel" else RunStatus.FAILED)
    if how == "timeout":
        assert done.error == "timed out after 1s"
    await wait_gone(*found.values())


async def test_a_handler_that_ignores_cancellation_is_left_behind_after_the_kill_grace(start_daemon):
    h = await start_daemon(
        {"deaf": {"handler": "sample_jobs:deaf", "timeout_s": 0.1, "overlap": "allow"}, "noop": NOOP},
        workers={"concurrency": 1, "kill_grace_s": 0.2},
    )
    timed_out = await h.finished((await h.trigger("deaf"))["id"])
    assert timed_out.status is RunStatus.FAILED
    assert timed_out.error == "timed out after 0.1s; the handler ignored its cancellation and was left behind"
    # Its worker is free again, and a cancel request does not wait for it forever either.
    assert (await h.finished((await h.trigger("noop"))["id"])).status is RunStatus.COMPLETED
    h.daemon.runs.jobs["deaf"] = dataclasses.replace(h.daemon.runs.jobs["deaf"], timeout_s=None)
    run = await h.trigger("deaf")
    await wait_for(lambda: h.daemon.pool.busy == 1)
    response = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status == 200 and (await response.json())["run"]["status"] == "CANCELLED"


async def test_callers_that_stop_waiting_for_a_run_leave_no_waiter_behind(start_daemon, backend):
    sqlite_only(backend, "reads LocalBackend's waiters")
    h = await start_daemon({"slow": SLEEPY})
    run = await h.daemon.runs.get((await h.trigger("slow", {"seconds": 30}))["id"])
    for _ in range(3):  # e.g. cancel requests whose clients went away
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await h.daemon.runs.wait_finished(run)
    assert h.daemon.backend.active.waiters_of(run.id) == 0
    await h.daemon.runs.cancel(run.id)
    assert run.status is RunStatus.CANCELLED


async def test_command_failure_records_exit_code_and_stderr(start_daemon):
    h = await start_daemon({"bad": {"shell": "echo first >&2; echo 'it broke' >&2; exit 3"}})
    run = await h.trigger("bad")
    done = await h.finished(run["id"])
    assert done.status is RunStatus.FAILED and done.exit_code == 3
    assert done.error == "exit code 3: it broke"


async def test_pause_and_resume(start_daemon):
    h = await start_daemon({"tick": {**NOOP, "schedule": "0 * * * *"}})
    job = (await h.get_json("/api/v1/jobs/tick"))["job"]
    assert job["paused"] is False and job["next_run_at"] is not None
    response = await h.client.post("/api/v1/jobs/tick/pause")
    paused = (await response.json())["job"]
    assert paused["paused"] is True and paused["next_run_at"] is None
    # Manual triggers still work while paused.
    run = await h.trigger("tick")
    await h.finished(run["id"])
    response = await h.client.post("/api/v1/jobs/tick/resume")
    assert (await response.json())["job"]["next_run_at"] is not None
    jobs = (await h.get_json("/api/v1/jobs"))["jobs"]
    assert jobs[0]["name"] == "tick" and jobs[0]["last_run"]["id"] == run["id"]


async def test_a_jobs_last_run_is_shown_after_a_restart(start_daemon, make_config, backend):
    sqlite_only(backend, "reads LocalBackend's last-run cache")
    config = make_config({"tick": NOOP, "other": NOOP, "never": NOOP})
    first = await start_daemon(config=config)
    older = await first.trigger("tick")
    await first.finished(older["id"])
    last = await first.trigger("tick")
    other = await first.trigger("other")
    for run in (last, other):
        await first.finished(run["id"])
    await first.client.close()  # stops that daemon: the store is free for the next one
    h = await start_daemon(config=config)
    # Read from the store when first asked for, not at start.
    assert h.daemon.backend.last.known == {}
    jobs = {job["name"]: job for job in (await h.get_json("/api/v1/jobs"))["jobs"]}
    assert (jobs["tick"]["last_run"]["id"], jobs["other"]["last_run"]["id"]) == (last["id"], other["id"])
    assert jobs["never"]["last_run"] is None
    newer = await h.trigger("tick")
    assert (await h.get_json("/api/v1/jobs/tick"))["job"]["last_run"]["id"] == newer["id"]
    assert (await h.get_json("/api/v1/runs/last?job=other"))["run"]["id"] == other["id"]


async def test_queue_and_health(start_daemon):
    h = await start_daemon({"slow": SLEEPY, "noop": NOOP}, workers={"concurrency": 1})
    empty = await h.get_json("/api/v1/queue")
    assert (empty["pending"], empty["oldest_pending_age_s"]) == (0, None)
    done = await h.trigger("noop")
    await h.finished(done["id"])
    now = [now_ms()]
    h.daemon.runs.clock = lambda: now[0]  # the run table's injectable clock
    running = await h.trigger("slow", {"seconds": 30})
    await wait_for(lambda: h.daemon.pool.busy == 1)
    waiting = await h.trigger("slow", {"seconds": 30})
    now[0] += 5000
    newer = await h.trigger("slow", {"seconds": 30})
    now[0] += 60_000
    queue = await h.get_json("/api/v1/queue")
    assert set(queue) == {"counts", "pending", "processing", "workers", "oldest_pending_age_s", "groups"}
    assert queue["workers"] == {"busy": 1, "total": 1}
    assert queue["counts"] == {"PENDING": 2, "PROCESSING": 1, "COMPLETED": 1, "PARTIAL": 0, "FAILED": 0, "CANCELLED": 0}
    assert (queue["pending"], queue["processing"]) == (2, 1)
    assert queue["oldest_pending_age_s"] == 65.0  # the older of the two waiting runs
    await h.client.post(f"/api/v1/runs/{waiting['id']}/cancel")
    assert (await h.get_json("/api/v1/queue"))["oldest_pending_age_s"] == 60.0
    assert (await h.get_json("/healthz"))["status"] == "ok"
    assert (await h.get_json("/api/v1/readyz"))["status"] == "ready"
    for run in (newer, running):
        await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


async def test_while_shutting_down_readiness_and_triggers_are_503(start_daemon):
    h = await start_daemon({"noop": NOOP})
    run = await h.trigger("noop")
    await h.finished(run["id"])
    await h.daemon.drain(grace_s=0)
    response = await h.client.get("/readyz")
    assert response.status == 503 and (await response.json())["status"] == "shutting down"
    assert (await h.client.get("/healthz")).status == 200  # alive, only not ready
    for path in ("/api/v1/jobs/noop/trigger", f"/api/v1/runs/{run['id']}/retry"):
        response = await h.client.post(path)
        assert response.status == 503 and response.content_type == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0


async def test_a_run_that_fails_during_the_shutdown_grace_keeps_its_retry(start_daemon):
    h = await start_daemon({"flaky": {"handler": "sched_jobs:fails_when_released", "retries": 1}})
    run = await h.trigger("flaky")
    await wait_for(lambda: run["id"] in sched_jobs.releases)  # the handler is waiting for its release
    draining = asyncio.ensure_future(h.daemon.drain(grace_s=10))
    await wait_for(lambda: not h.daemon.runs.accepting)
    sched_jobs.releases[run["id"]].set()  # it fails while jobd waits for it to finish
    await draining
    failed = await h.finished(run["id"])
    assert (failed.status, failed.error) == (RunStatus.FAILED, "RuntimeError: failed on release")
    [retry] = [r for r in (await h.daemon.store.active_runs()) if r.retry_of == run["id"]]
    assert (retry.status, retry.triggered_by.value, retry.attempt) == (RunStatus.PENDING, "retry", 2)


async def test_a_stop_records_a_run_whose_handler_outlasts_the_kill_grace(start_daemon):
    # The runner ends every handler within the kill grace, unless it cannot: here an async handler
    # blocks the event loop once cancelled (a process that SIGKILL cannot end yet, in uninterruptible
    # I/O, is the other case). Its worker is cancelled with the rest, so the stop records the run.
    kill_grace = 0.05
    h = await start_daemon(
        {"stall": {"handler": "sample_jobs:stalls_the_loop_when_cancelled"}}, workers={"kill_grace_s": kill_grace}
    )
    run = await h.trigger("stall", {"block_s": kill_grace + runner.PIPE_DRAIN_S + 0.5})
    await wait_for(lambda: h.daemon.pool.live_tail(run["id"]))
    await h.daemon.drain(grace_s=0)
    stored = await h.daemon.store.get_run(run["id"])
    assert stored is not None and stored.status is RunStatus.FAILED
    assert stored.error == INTERRUPTED + " (its handler outlasted the kill grace)"
    assert stored.log_tail == "started\n"
    [retry] = [r for r in await h.daemon.store.active_runs() if r.retry_of == run["id"]]
    assert (retry.status, retry.triggered_by.value) == (RunStatus.PENDING, "retry")


async def test_a_finished_run_never_changes_again(start_daemon):
    h = await start_daemon({"noop": NOOP})
    run = await h.trigger("noop")
    done = await h.finished(run["id"])
    for status in RunStatus:
        with pytest.raises(InvalidTransition):
            h.daemon.backend.finish(done, status)
    assert (await h.daemon.store.get_run(run["id"])).to_json() == done.to_json()
    response = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status == 409 and (await response.json())["run_status"] == "COMPLETED"


async def test_runs_waiting_for_a_job_that_a_reload_removed_fail_instead_of_waiting_forever(start_daemon, tmp_path):
    path = tmp_path / "jobd.toml"
    store = f'[store]\npath = "{tmp_path / "state" / "jobd.db"}"\n'
    path.write_text(
        store + '[jobs.old]\nhandler = "sample_jobs:sleepy"\noverlap = "queue"\n'
        '[jobs.new]\nhandler = "sample_jobs:noop"\n'
    )
    h = await start_daemon(config=load_config(path, environ={}))
    running = await h.trigger("old", {"seconds": 30})
    waiting = [await h.trigger("old", {"seconds": 30}) for _ in range(2)]
    await wait_for(lambda: h.daemon.runs.is_running("old"))
    path.write_text(store + '[jobs.new]\nhandler = "sample_jobs:noop"\n')
    assert await h.daemon.reload()
    assert [j["name"] for j in (await h.get_json("/api/v1/jobs"))["jobs"]] == ["new"]
    await h.client.post(f"/api/v1/runs/{running['id']}/cancel")
    for run in waiting:
        done = await h.finished(run["id"])
        assert (done.status, done.error) == (RunStatus.FAILED, "job 'old' is no longer configured")
    assert (await h.finished((await h.trigger("new"))["id"])).status is RunStatus.COMPLETED


async def test_a_reload_that_raises_a_limit_starts_what_waited(start_daemon, tmp_path):
    path = tmp_path / "jobd.toml"
    job = (
        f'[store]\npath = "{tmp_path / "state" / "jobd.db"}"\n[jobs.slow]\nhandler = "sample_jobs:sleepy"\n'
        'overlap = "allow"\nmax_concurrency = '
    )
    path.write_text(job + "1\n")
    h = await start_daemon(config=load_config(path, environ={}))
    runs = [await h.trigger("slow", {"seconds": 30}) for _ in range(4)]
    await wait_for(lambda: h.daemon.pool.busy == 1)
    path.write_text(job + "3\n")
    assert await h.daemon.reload()
    await wait_for(lambda: h.daemon.pool.busy == 3)
    assert [await h.status_of(r["id"]) for r in runs] == [RunStatus.PROCESSING] * 3 + [RunStatus.PENDING]
    for run in runs:
        await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


async def test_batch_trigger(start_daemon):
    h = await start_daemon({"noop": {**NOOP, "overlap": "queue"}}, server={"max_batch_runs": 5})
    response = await h.client.post("/api/v1/jobs/noop/trigger", json={"runs": [{"params": {"i": i}} for i in range(5)]})
    assert response.status == 202
    runs = (await response.json())["runs"]
    assert [r["params"]["i"] for r in runs] == list(range(5))
    for run in runs:
        assert (await h.finished(run["id"])).status is RunStatus.COMPLETED
    response = await h.client.post("/api/v1/jobs/noop/trigger", json={"runs": [{}] * 6})
    assert response.status == 400
    problem = await response.json()
    assert (problem["max_batch_runs"], problem["type"]) == (
        5,
        "urn:jobd:problem:bad-request",
    )  # what a client splits by
    assert (await h.get_json("/api/v1/runs?job=noop"))["pagination"]["total"] == 5  # refused whole


async def test_request_id_is_echoed(start_daemon):
    h = await start_daemon({})
    for given in ("abc-123", "4bf92f3577b34da6a3ce929d0e0e4736", "trace/span+b64==", "{8f0e}"):
        response = await h.client.get("/healthz", headers={"X-Request-ID": given})
        assert response.headers["X-Request-ID"] == given
    response = await h.client.get("/healthz")
    assert len(response.headers["X-Request-ID"]) == 32
    for odd in ("has spaces", "x" * 201, "caf\u00e9"):  # replaced by an id of jobd's own
        response = await h.client.get("/healthz", headers={"X-Request-ID": odd.encode().decode("latin-1")})
        assert len(response.headers["X-Request-ID"]) == 32


async def test_sync_handler_runs_in_a_thread_and_timeouts_fail_the_run(start_daemon):
    h = await start_daemon(
        {
            "blocking": {"handler": "sample_jobs:blocking"},
            "slow": {"handler": "sample_jobs:sleepy", "timeout_s": 0.2},
            "slow-cmd": {"command": ["sleep", "30"], "timeout_s": 0.2},
        }
    )
    done = await h.finished((await h.trigger("blocking"))["id"])
    assert done.status is RunStatus.COMPLETED and done.result == 42 and done.message == "half way"
    for job in ("slow", "slow-cmd"):
        timed_out = await h.finished((await h.trigger(job, {"seconds": 30}))["id"])
        assert timed_out.status is RunStatus.FAILED
        assert timed_out.error == "timed out after 0.2s"
