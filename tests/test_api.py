"""The HTTP API through aiohttp's test client, against a real daemon and a real SQLite file."""

from __future__ import annotations

import asyncio
import json

from conftest import PYTHON, SCRIPTS, wait_for

from jobd.models import RunStatus

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


async def test_run_fields_are_complete(start_daemon):
    h = await start_daemon({"noop": NOOP})
    run = await h.trigger("noop")
    expected = {"id", "job", "status", "progress", "message", "triggered_by", "params", "attempt", "max_attempts",
                "scheduled_for", "created_at", "started_at", "finished_at", "duration_ms", "counts", "result",
                "error", "exit_code", "retry_of"}
    assert expected <= set(run)
    assert set(run["counts"]) == {"total", "success", "failed", "skipped"}


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
    for body in (b"{not json", b"[1, 2]", json.dumps({"params": [1]}).encode(), json.dumps({"bogus": 1}).encode()):
        response = await h.client.post("/api/v1/jobs/noop/trigger", data=body)
        assert response.status == 400, body
        assert response.content_type == "application/problem+json"
    for query in ("limit=0", "limit=501", "limit=abc", "status=DONE", "since=yesterday", "triggered_by=robot"):
        response = await h.client.get(f"/api/v1/runs?{query}")
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"


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


async def test_list_filters_pagination_and_statistics(start_daemon):
    h = await start_daemon({"noop": {**NOOP, "overlap": "allow"}, "bad": {"handler": "sample_jobs:fails",
                                                                         "overlap": "allow"}})
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


async def test_last_run(start_daemon):
    h = await start_daemon({"noop": {**NOOP, "overlap": "allow"}})
    await h.get_json("/api/v1/runs/last?job=noop", expect=404)
    await h.get_json("/api/v1/runs/last", expect=400)
    a = await h.trigger("noop")
    b = await h.trigger("noop")
    await h.finished(b["id"])
    last = await h.get_json("/api/v1/runs/last?job=noop")
    assert last["run"]["id"] == b["id"] != a["id"]


async def test_cancel_pending_and_running(start_daemon):
    h = await start_daemon({"slow": SLEEPY}, workers={"concurrency": 1})
    running = await h.trigger("slow", {"seconds": 30})
    waiting = await h.trigger("slow", {"seconds": 30})
    await wait_for(lambda: h.daemon.runs.active[running["id"]].status is RunStatus.PROCESSING)
    response = await h.client.post(f"/api/v1/runs/{waiting['id']}/cancel")
    assert response.status == 200
    assert (await response.json())["run"]["status"] == "CANCELLED"
    response = await h.client.post(f"/api/v1/runs/{running['id']}/cancel")
    body = await response.json()
    assert response.status == 200 and body["run"]["status"] == "CANCELLED"
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


async def test_failed_run_is_retried_with_backoff(start_daemon):
    h = await start_daemon({"bad": {"handler": "sample_jobs:fails", "retries": 2, "retry_backoff_s": 0.05}})
    first = await h.trigger("bad")
    await h.finished(first["id"])
    chain = [first["id"]]
    for _ in range(2):
        retry = await wait_for(lambda: next((r for r in h.daemon.runs.active.values() if r.retry_of == chain[-1]),
                                            None) or None)
        assert retry.triggered_by.value == "retry" and retry.run_after is not None
        assert retry.run_after - retry.created_at >= 40  # 0.05 s * 2^(n-1) with ±20% jitter
        stored = await h.finished(retry.id)
        assert stored.status is RunStatus.FAILED
        chain.append(retry.id)
    runs = (await h.get_json("/api/v1/runs?job=bad"))["runs"]
    assert [r["attempt"] for r in sorted(runs, key=lambda r: r["id"])] == [1, 2, 3]
    assert all(r["max_attempts"] == 3 for r in runs)
    assert h.daemon.runs.job_state("bad").consecutive_failures == 3


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


async def test_a_jobs_last_run_is_shown_after_a_restart(start_daemon, make_config):
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
    assert h.daemon.runs.last_runs == {}
    jobs = {job["name"]: job for job in (await h.get_json("/api/v1/jobs"))["jobs"]}
    assert (jobs["tick"]["last_run"]["id"], jobs["other"]["last_run"]["id"]) == (last["id"], other["id"])
    assert jobs["never"]["last_run"] is None
    newer = await h.trigger("tick")
    assert (await h.get_json("/api/v1/jobs/tick"))["job"]["last_run"]["id"] == newer["id"]
    assert (await h.get_json("/api/v1/runs/last?job=other"))["run"]["id"] == other["id"]


async def test_queue_and_health(start_daemon):
    h = await start_daemon({"slow": SLEEPY}, workers={"concurrency": 1})
    running = await h.trigger("slow", {"seconds": 30})
    waiting = await h.trigger("slow", {"seconds": 30})
    await wait_for(lambda: h.daemon.pool.busy == 1)
    queue = await h.get_json("/api/v1/queue")
    assert queue["workers"] == {"busy": 1, "total": 1}
    assert queue["counts"]["PENDING"] == 1 and queue["counts"]["PROCESSING"] == 1
    assert queue["oldest_pending_age_s"] >= 0
    assert (await h.get_json("/healthz"))["status"] == "ok"
    assert (await h.get_json("/api/v1/readyz"))["status"] == "ready"
    for run in (waiting, running):
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


async def test_request_id_is_echoed(start_daemon):
    h = await start_daemon({})
    response = await h.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await h.client.get("/healthz")
    assert len(response.headers["X-Request-ID"]) == 32


async def test_sync_handler_runs_in_a_thread_and_timeouts_fail_the_run(start_daemon):
    h = await start_daemon({
        "blocking": {"handler": "sample_jobs:blocking"},
        "slow": {"handler": "sample_jobs:sleepy", "timeout_s": 0.2},
        "slow-cmd": {"command": ["sleep", "30"], "timeout_s": 0.2},
    })
    done = await h.finished((await h.trigger("blocking"))["id"])
    assert done.status is RunStatus.COMPLETED and done.result == 42 and done.message == "half way"
    for job in ("slow", "slow-cmd"):
        timed_out = await h.finished((await h.trigger(job, {"seconds": 30}))["id"])
        assert timed_out.status is RunStatus.FAILED
        assert timed_out.error == "timed out after 0.2s"
