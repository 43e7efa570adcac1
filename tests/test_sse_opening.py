"""How a stream opens over a real connection: the current state or the replay from Last-Event-ID,
for one run and for the firehose (jobd.web.sse.opening)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest
import structlog
from conftest import BACKENDS, sqlite_only, wait_for
from sse_jobs import control
from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)

from jobd.web.sse import STREAMS

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def status_updates(messages):
    return [m for m in messages if m.type == "status_update"]


async def test_run_stream_order_ids_snapshot_and_end(serve):
    s = await serve()
    run_id, steps = await s.stepper()
    response, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    connected = await stream.next()
    assert stream.retry == 2000  # the retry: hint comes first
    assert connected.data == {"type": "connected", "run_id": run_id}
    snapshot = await stream.next()
    assert snapshot.type == "status_update"
    assert snapshot.data["status"] == "PROCESSING" and snapshot.data["run_id"] == run_id
    expected_fields = {
        "type",
        "run_id",
        "job",
        "status",
        "progress",
        "message",
        "counts",
        "error",
        "result",
        "updated_at",
    }
    assert expected_fields <= set(snapshot.data)
    for pct in (10, 20, 30):
        await steps.put(("progress", pct, f"at {pct}"))
        message = await stream.next()
        assert (message.data["progress"], message.data["message"]) == (pct, f"at {pct}")
    await steps.put(None)
    rest = await stream.rest()
    assert [m.data["status"] for m in rest] == ["COMPLETED"]
    assert rest[-1].data["result"] == {"steps": "done"}
    ids = [m.id for m in stream.messages]
    assert all(isinstance(i, int) for i in ids)
    assert ids[0] == 0 and ids[1:] == sorted(set(ids[1:])), ids  # strictly increasing after `connected`
    assert response.content.at_eof()


async def test_finished_run_sends_connected_final_state_and_ends(serve):
    s = await serve()
    run = await s.trigger("noop")
    await wait_for(lambda: run["id"] not in s.daemon.runs.active)
    for path, headers in (
        (f"/api/v1/runs/{run['id']}/events", None),
        (f"/api/v1/runs/{run['id']}", {"Accept": "text/event-stream"}),
    ):
        response, stream = await s.open(path, headers)
        assert response.headers["Content-Type"] == "text/event-stream"
        messages = await stream.rest()
        assert [m.type for m in messages] == ["connected", "status_update"]
        assert messages[1].data["status"] == "COMPLETED"
        assert messages[1].data["result"] == {"echo": {}}
    # A client that already has the final state is told there is nothing more (stops EventSource too).
    response = await s.session.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": str(messages[1].id)})
    assert response.status == 204
    # The plain JSON view is unchanged.
    async with s.session.get(f"/api/v1/runs/{run['id']}") as response:
        assert response.content_type == "application/json"
    # An id that is not one (digits of other scripts, a superscript) is ignored: the stream starts afresh.
    for junk in ("%C2%B2", "%D9%A3", "-1", "1e5", "9" * 30):
        for path in (f"/api/v1/runs/{run['id']}/events", "/api/v1/events"):
            response, stream = await s.open(f"{path}?last_event_id={junk}")
            assert response.status == 200, (path, junk)
            assert (await stream.next()).type == "connected"
            response.close()


async def test_unknown_run_is_404_before_any_stream(serve):
    s = await serve()
    for path in ("/api/v1/runs/424242/events", "/api/v1/runs/abc/events"):
        async with s.session.get(path) as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
    async with s.session.get("/api/v1/runs/424242", headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 404 and response.content_type == "application/problem+json"
    assert s.daemon.bus.subscriber_count == 0
    assert len(s.app[STREAMS]) == 0


async def test_failed_run_stream_ends_with_error(serve):
    s = await serve()
    run_id, steps = await s.stepper()
    response, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    await stream.until(lambda m: m.type == "status_update")
    await steps.put(("fail", "it broke"))
    rest = await stream.rest()
    assert rest[-1].data["status"] == "FAILED"
    assert "it broke" in rest[-1].data["error"]


async def test_last_event_id_replays_without_gap_or_duplicate(serve, backend):
    sqlite_only(backend, "every progress step is an event here; a cluster coalesces progress")
    s = await serve()
    run_id, steps = await s.stepper()
    published: list[int] = []
    s.daemon.bus.listeners.append(lambda e: published.append(e.id) if e.run_id == run_id else None)
    first, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    await stream.until(lambda m: m.type == "status_update")
    for pct in (1, 2):
        await steps.put(("progress", pct, None))
        await stream.until(lambda m: m.data.get("progress") == pct)
    first.close()
    seen_first = [m.id for m in status_updates(stream.messages)][1:]  # after the snapshot
    last_id = stream.messages[-1].id
    # Changes while the client is away: non-progress steps are not coalesced away.
    for pct in (3, 4, 5):
        await steps.put(("progress", pct, f"step {pct}"))
    await wait_for(lambda: len(published) >= 5)
    for how in ("header", "query"):
        if how == "header":
            second, resumed = await s.open(f"/api/v1/runs/{run_id}/events", {"Last-Event-ID": str(last_id)})
        else:
            second, resumed = await s.open(f"/api/v1/runs/{run_id}/events?last_event_id={last_id}")
        connected = await resumed.next()
        assert connected.data["type"] == "connected" and connected.id == last_id
        replay = await resumed.until(lambda m: m.data.get("progress") == 5)
        assert seen_first + [m.id for m in replay] == published, how
        assert [m.data["progress"] for m in replay] == [3, 4, 5]
        second.close()
    await steps.put(None)
    await wait_for(lambda: run_id not in s.daemon.runs.active)


async def test_snapshot_when_the_id_has_left_the_ring(serve, backend):
    sqlite_only(backend, "every progress step is an event here; a cluster coalesces progress")
    s = await serve(events={"ring_size": 10})
    run_id, steps = await s.stepper()
    first, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    messages = await stream.until(lambda m: m.type == "status_update")
    first.close()
    old_id = messages[-1].id
    start = s.daemon.bus.last_id
    for pct in range(1, 16):
        await steps.put(("progress", pct, f"step {pct}"))
    await wait_for(lambda: s.daemon.bus.last_id >= start + 15)
    assert s.daemon.bus.since(old_id) is None
    second, resumed = await s.open(f"/api/v1/runs/{run_id}/events", {"Last-Event-ID": str(old_id)})
    connected = await resumed.next()
    assert connected.type == "connected" and connected.id == 0  # could not resume: starts afresh
    snapshot = await resumed.next()
    assert snapshot.type == "status_update"
    assert (snapshot.data["progress"], snapshot.data["message"]) == (15, "step 15")
    await steps.put(None)
    assert [m.data["status"] for m in await resumed.rest()] == ["COMPLETED"]


async def test_firehose_filters_and_summary(serve):
    s = await serve(events={"summary_interval_s": 0.05}, jobs={"step": STEPPER, "noop": NOOP, "other": NOOP})
    everything, all_stream = await s.open("/api/v1/events")
    only_noop, noop_stream = await s.open("/api/v1/events?job=noop&status=COMPLETED")
    for stream in (all_stream, noop_stream):
        opening = await stream.until(lambda m: m.type == "summary")
        assert opening[0].data == {"type": "connected", "run_id": None}
        assert set(opening[-1].data) == {"type", "queue", "workers", "counts"}
    other = await s.trigger("other")
    noop = await s.trigger("noop")
    got = await noop_stream.until(lambda m: m.type == "status_update")
    assert (got[-1].data["run_id"], got[-1].data["status"]) == (noop["id"], "COMPLETED")
    seen = await all_stream.until(lambda m: m.type == "summary" and m.data["counts"]["COMPLETED"] == 2)
    runs = {(m.data["run_id"], m.data["status"]) for m in seen if m.type == "status_update"}
    assert {(other["id"], "COMPLETED"), (noop["id"], "COMPLETED"), (other["id"], "PENDING")} <= runs
    summary = seen[-1].data
    assert summary["queue"] == {"pending": 0, "processing": 0}
    assert summary["workers"]["total"] == 4
    # Summaries are not replayable; status filters are checked.
    async with s.session.get("/api/v1/events?status=DONE") as bad:
        assert bad.status == 400
    everything.close()
    only_noop.close()


async def test_firehose_snapshot_lists_active_runs_and_needs_admin(serve):
    tokens = [
        {"name": "reader", "token": "read-token-1", "scope": "read"},
        {"name": "boss", "token": "admin-token-1", "scope": "admin"},
    ]
    s = await serve(auth={"tokens": tokens})
    admin = {"Authorization": "Bearer admin-token-1"}
    key = uuid.uuid4().hex
    steps = control(key)
    run = await s.trigger("step", {"key": key}, headers=admin)
    await s.processing(run["id"])
    async with s.session.get("/api/v1/events", headers={"Authorization": "Bearer read-token-1"}) as refused:
        assert refused.status == 403
    response, stream = await s.open("/api/v1/events", admin)
    opening = await stream.until(lambda m: m.type == "summary")
    assert [m.type for m in opening] == ["connected", "status_update", "summary"]
    assert opening[1].data["run_id"] == run["id"] and opening[1].data["status"] == "PROCESSING"
    assert opening[2].data["workers"]["busy"] == 1
    response.close()
    await steps.put(None)


async def test_a_terminal_state_the_store_refuses_is_written_again_and_only_then_announced(serve, backend):
    sqlite_only(backend, "blocks the SQLite file")
    """Another connection holds the store's write lock while a run ends: the commit fails after
    the busy timeout, the run still shows PROCESSING, and once the lock is gone the retry commits
    it and the stream gets COMPLETED."""
    cap = structlog.testing.CapturingLogger()
    s = await serve(log=structlog.wrap_logger(cap, processors=[]))
    run_id, steps = await s.stepper()
    response, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    assert [(await stream.next()).type for _ in range(2)] == ["connected", "status_update"]

    blocker = sqlite3.connect(s.daemon.config.store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        steps.put_nowait(None)  # the handler returns; its COMPLETED cannot be written
        refused = await wait_for(
            lambda: [call.kwargs for call in cap.calls if call.kwargs.get("event") == "finish_not_committed"],
            timeout=20,
        )
        assert refused[0]["run_id"] == run_id and "locked" in refused[0]["error"]
        async with s.session.get(f"/api/v1/runs/{run_id}") as shown:
            assert (await shown.json())["run"]["status"] == "PROCESSING"
    finally:
        blocker.rollback()
        blocker.close()
    message = await asyncio.wait_for(stream.next(), 20)
    assert (message.type, message.data["status"]) == ("status_update", "COMPLETED")
    async with s.session.get(f"/api/v1/runs/{run_id}") as shown:
        assert (await shown.json())["run"]["status"] == "COMPLETED"
    response.close()
