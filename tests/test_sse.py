"""Server-Sent Events over real sockets: a real daemon served the way `jobd serve` serves it."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from typing import Any

import structlog
from conftest import wait_for
from sse_jobs import control
from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)

from jobd.web.sse import STREAMS
from jobd.web.tickets import TICKETS


def status_updates(messages):
    return [m for m in messages if m.type == "status_update"]


# -- a run's stream ----------------------------------------------------------------------------------


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


# -- resuming ----------------------------------------------------------------------------------------


async def test_last_event_id_replays_without_gap_or_duplicate(serve):
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


async def test_snapshot_when_the_id_has_left_the_ring(serve):
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


# -- heartbeats, limits, slow and gone clients ---------------------------------------------------------


async def test_heartbeats_on_an_idle_stream(serve):
    s = await serve(server={"sse_heartbeat_s": 0.05})
    run_id, steps = await s.stepper()
    response, stream = await s.open(f"/api/v1/runs/{run_id}/events")
    await stream.until(lambda m: m.type == "status_update")
    while stream.heartbeats < 3:
        async with asyncio.timeout(10):
            line = await response.content.readline()
        assert line in (b": ping\n", b"\n"), line
        stream.heartbeats += line.startswith(b":")
    response.close()
    await steps.put(None)


async def test_stream_limit_is_503_problem(serve):
    s = await serve(server={"max_streams": 2, "sse_heartbeat_s": 0.1})
    run_id, steps = await s.stepper()
    open_ones = []
    for _ in range(2):
        response, stream = await s.open(f"/api/v1/runs/{run_id}/events")
        await stream.until(lambda m: m.type == "status_update")
        open_ones.append(response)
    for path in (f"/api/v1/runs/{run_id}/events", "/api/v1/events"):
        async with s.session.get(path) as refused:
            assert refused.status == 503
            assert refused.content_type == "application/problem+json"
            assert "max_streams" in (await refused.json())["detail"]
            assert refused.headers["Retry-After"]
    open_ones.pop().close()
    await wait_for(lambda: len(s.app[STREAMS]) == 1)
    response, stream = await s.open("/api/v1/events")
    assert response.status == 200
    response.close()
    open_ones.pop().close()
    await steps.put(None)


async def test_disconnected_clients_are_cleaned_up(serve):
    s = await serve(server={"sse_heartbeat_s": 0.1})
    run_id, steps = await s.stepper()
    before = asyncio.all_tasks()
    responses = []
    for path in (f"/api/v1/runs/{run_id}/events", "/api/v1/events", f"/api/v1/runs/{run_id}/events?log=1"):
        response, stream = await s.open(path)
        await stream.until(lambda m: m.type in ("status_update", "summary"))
        responses.append(response)
    assert s.daemon.bus.subscriber_count == 3
    assert s.daemon.bus.wants_logs(run_id)
    for response in responses:
        response.close()
    # No event is published meanwhile: the streams notice the closed connections by themselves.
    await wait_for(lambda: s.daemon.bus.subscriber_count == 0 and len(s.app[STREAMS]) == 0)
    assert not s.daemon.bus.wants_logs(run_id)
    await wait_for(lambda: not (asyncio.all_tasks() - before))
    await steps.put(None)


async def test_slow_client_is_cut_off_while_a_fast_one_keeps_receiving(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(
        events={"subscriber_buffer": 4}, server={"sse_heartbeat_s": 0.1}, log=structlog.wrap_logger(cap, processors=[])
    )
    run_id, steps = await s.stepper()
    path = f"/api/v1/runs/{run_id}/events?log=1"
    # The slow client: a raw socket with a tiny receive buffer that never reads after the request.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, s.runner.addresses[0][:2])
    await asyncio.get_running_loop().sock_sendall(slow, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    fast, stream = await s.open(path)
    await stream.until(lambda m: m.type == "status_update")
    await wait_for(lambda: s.daemon.bus.subscriber_count == 2)
    sent = 0
    try:
        while s.daemon.bus.dropped == 0:
            assert sent < 3000, "the slow client was never cut off"
            sent += 1
            await steps.put(("log", f"{sent:05d} " + "x" * 30_000))
            message = await stream.until(lambda m: m.type == "log")
            assert message[-1].data["line"].startswith(f"{sent:05d} ")
        # The fast one keeps receiving after the cut.
        for _ in range(3):
            sent += 1
            await steps.put(("log", f"{sent:05d} tail"))
            message = await stream.until(lambda m: m.type == "log")
            assert message[-1].data["line"] == f"{sent:05d} tail"
        await wait_for(lambda: s.daemon.bus.subscriber_count == 1 and len(s.app[STREAMS]) == 1)
        print("events sent before the cut:", sent)
        lines = [m.data["line"][:5] for m in stream.messages if m.type == "log"]
        assert lines == [f"{i:05d}" for i in range(1, sent + 1)]  # every one, in order
        assert any(call.kwargs.get("event") == "subscriber_overflow" for call in cap.calls)
    finally:
        slow.close()
        await steps.put(None)
    assert (await stream.rest())[-1].data["status"] == "COMPLETED"


async def test_shutdown_is_sent_to_every_stream_on_stop(serve):
    s = await serve()
    run_id, steps = await s.stepper()
    readers = []
    for path in (f"/api/v1/runs/{run_id}/events", "/api/v1/events"):
        response, stream = await s.open(path)
        await stream.until(lambda m: m.type in ("status_update", "summary"))
        readers.append(stream)
    stopping = asyncio.create_task(s.stop())
    for stream in readers:
        rest = await stream.rest()
        assert rest[-1].type == "shutdown", rest
        assert rest[-1].id is not None
    await stopping


async def test_idle_streams_cause_no_store_queries(serve):
    s = await serve(server={"sse_heartbeat_s": 0.05})
    run_id, steps = await s.stepper()
    done = await s.trigger("noop")
    await wait_for(lambda: done["id"] not in s.daemon.runs.active)
    queries: list[str] = []
    await s.daemon.store._reader.set_trace_callback(queries.append)
    readers = []
    for index in range(20):
        path = f"/api/v1/runs/{run_id}/events" if index % 2 else "/api/v1/events"
        response, stream = await s.open(path)
        readers.append((response, stream))
    for pct in (5, 6):
        await steps.put(("progress", pct, None))
    for response, stream in readers:
        await stream.until(lambda m: m.data.get("progress") == 6)
        while stream.heartbeats < 2:
            async with asyncio.timeout(10):
                stream.heartbeats += (await response.content.readline()).startswith(b":")
    assert queries == []
    # The counter does see reads: a finished run's stream reads its final state once.
    response, stream = await s.open(f"/api/v1/runs/{done['id']}/events")
    await stream.rest()
    assert len(queries) == 1 and "FROM runs" in queries[0]
    for response, _ in readers:
        response.close()
    await steps.put(None)


# -- the firehose ----------------------------------------------------------------------------------------


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


async def test_a_batch_larger_than_the_buffer_reaches_a_firehose_that_keeps_up(serve):
    # 30 runs at once publish 30 PENDING updates before the stream's task can run: a burst, not lag.
    s = await serve(
        events={"subscriber_buffer": 8},
        server={"max_batch_runs": 30},
        jobs={"noop": {**NOOP, "overlap": "allow", "max_concurrency": 30}},
    )
    response, stream = await s.open("/api/v1/events?job=noop")
    await stream.until(lambda m: m.type == "summary")
    async with s.session.post("/api/v1/jobs/noop/trigger", json={"runs": [{}] * 30}) as answer:
        assert answer.status == 202
        ids = [run["id"] for run in (await answer.json())["runs"]]
    seen = await stream.until(
        lambda m: m.type == "status_update" and m.data["status"] == "COMPLETED" and m.data["run_id"] == ids[-1]
    )
    pending = [m.data["run_id"] for m in seen if m.type == "status_update" and m.data["status"] == "PENDING"]
    assert pending == ids  # every one, in order
    assert s.daemon.bus.dropped == 0
    response.close()


async def test_an_http_1_0_stream_is_not_chunked(serve):
    s = await serve()
    reader, writer = await asyncio.open_connection(*s.runner.addresses[0][:2])
    writer.write(b"GET /api/v1/events?job=noop HTTP/1.0\r\nHost: x\r\n\r\n")
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        await reader.readuntil(b'"type":"summary"')
        await reader.readuntil(b"\n\n")
        run = await s.trigger("noop")
        body = b""
        async with asyncio.timeout(10):
            while b'"status":"COMPLETED"' not in body:
                body += await reader.read(65536)
        # Plain SSE lines, no chunk sizes between them: written as they are, by the publisher.
        messages = [m for m in body.split(b"\n\n") if m.strip(b"\n")]
        assert all(m.lstrip(b"\n").startswith((b"id: ", b"data: ")) for m in messages), body
        assert f'"run_id":{run["id"]}'.encode() in body
    finally:
        writer.close()
        await writer.wait_closed()


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


# -- CORS ----------------------------------------------------------------------------------------------------


async def test_cors_preflight_and_headers_for_configured_origins(serve):
    s = await serve(server={"cors_origins": ["https://app.example"]})
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    }
    async with s.session.options("/api/v1/runs/1/events", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "last-event-id", "content-type", "idempotency-key"} <= allowed
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    async with s.session.get("/api/v1/jobs", headers={"Origin": "https://app.example"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Origin" in response.headers["Vary"]
    async with s.session.get("/api/v1/runs/999", headers={"Origin": "https://app.example"}) as response:
        assert response.status == 404 and response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    response, stream = await s.open("/api/v1/events", {"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    response.close()
    async with s.session.get("/api/v1/jobs", headers={"Origin": "https://evil.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    async with s.session.options("/api/v1/jobs", headers={**preflight, "Origin": "https://evil.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_headers_by_default(serve):
    s = await serve()
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    async with s.session.options("/api/v1/jobs", headers=preflight) as response:
        assert response.status == 405
        assert "Access-Control-Allow-Origin" not in response.headers
    async with s.session.get("/api/v1/jobs", headers={"Origin": "https://app.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


# -- tickets -------------------------------------------------------------------------------------------------


TOKENS = [
    {"name": "reader", "token": "read-token-1", "scope": "read"},
    {"name": "boss", "token": "admin-token-1", "scope": "admin"},
]


async def mint(s: Served, stream: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with s.session.post("/api/v1/tickets", json={"stream": stream}, headers=headers) as response:
        return response.status, await response.json()


async def test_tickets_open_only_their_stream(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(auth={"tokens": TOKENS}, log=structlog.wrap_logger(cap, processors=[]))
    run = await s.trigger("noop", headers={"Authorization": "Bearer admin-token-1"})
    await wait_for(lambda: run["id"] not in s.daemon.runs.active)
    path = f"/api/v1/runs/{run['id']}/events"
    status, body = await mint(s, path, "read-token-1")
    assert status == 201, body
    assert set(body) == {"ticket", "stream", "expires_at"} and body["expires_at"].endswith("Z")
    ticket = body["ticket"]
    # Valid: the stream opens with no header at all.
    response, stream = await s.open(f"{path}?ticket={ticket}")
    assert response.status == 200
    assert [m.type for m in await stream.rest()] == ["connected", "status_update"]
    # Never for another path: the JSON view of the same run, another run, the firehose.
    for other in (
        f"/api/v1/runs/{run['id']}",
        f"/api/v1/runs/{run['id'] + 1}/events",
        "/api/v1/events",
        "/api/v1/jobs",
    ):
        async with s.session.get(f"{other}?ticket={ticket}") as refused:
            assert refused.status == 401, other
            assert refused.content_type == "application/problem+json"
    # A tampered ticket.
    async with s.session.get(f"{path}?ticket={ticket[:-2]}AA") as refused:
        assert refused.status == 401
    # Expired.
    expired, _ = s.app[TICKETS].mint(path, "read", ttl_s=-1)
    async with s.session.get(f"{path}?ticket={expired}") as refused:
        assert refused.status == 401 and "expired" in (await refused.json())["detail"]
    # A ticket for the run's own path opens it as a stream, as EventSource asks for it, and nothing else.
    status, body = await mint(s, f"/api/v1/runs/{run['id']}", "read-token-1")
    assert status == 201, body
    view = f"/api/v1/runs/{run['id']}?ticket={body['ticket']}"
    response, stream = await s.open(view, headers={"Accept": "text/event-stream"})
    assert response.status == 200
    assert [m.type for m in await stream.rest()] == ["connected", "status_update"]
    async with s.session.get(view) as refused:  # the JSON view
        assert refused.status == 401
    async with s.session.get(f"{path}?ticket={body['ticket']}") as refused:
        assert refused.status == 401
    # The access log never shows a ticket.
    logged = [call.kwargs["path"] for call in cap.calls if call.kwargs.get("event") == "request"]
    assert any("ticket=[redacted]" in p for p in logged)
    assert not any(ticket[:20] in p or expired[:20] in p for p in logged)


async def test_tickets_carry_the_tokens_scope(serve):
    s = await serve(auth={"tokens": TOKENS})
    assert (await mint(s, "/api/v1/events", "read-token-1"))[0] == 403
    assert (await mint(s, "/api/v1/events", None))[0] == 401
    assert (await mint(s, "/api/v1/jobs", "admin-token-1"))[0] == 400
    assert (await mint(s, "/api/v1/runs/1/log", "admin-token-1"))[0] == 400
    status, body = await mint(s, "/api/v1/events?job=noop", "admin-token-1")
    assert status == 201 and body["stream"] == "/api/v1/events"
    response, stream = await s.open(f"/api/v1/events?job=noop&ticket={body['ticket']}")
    assert response.status == 200
    assert (await stream.next()).type == "connected"
    response.close()
    # A ticket with a lower scope than the stream needs is refused at use, too.
    weak, _ = s.app[TICKETS].mint("/api/v1/events", "read")
    async with s.session.get(f"/api/v1/events?ticket={weak}") as refused:
        assert refused.status == 403


async def test_firehose_summary_at_most_once_per_interval(serve):
    """With an interval far longer than the test, many changes give one published summary at most."""
    s = await serve(events={"summary_interval_s": 3600})
    published = []
    s.daemon.bus.listeners.append(lambda e: published.append(e.data) if e.type == "summary" else None)
    response, stream = await s.open("/api/v1/events")
    await stream.until(lambda m: m.type == "summary")  # the opening one is the stream's own, not published
    for _ in range(3):
        run = await s.trigger("noop")
        await stream.until(
            lambda m: m.type == "status_update" and m.data["run_id"] == run["id"] and m.data["status"] == "COMPLETED"
        )
    # Every change woke the publisher; only the first one was allowed through.
    assert len(published) == 1, published
    assert len([m for m in stream.messages if m.type == "summary"]) == 2
    response.close()


async def test_a_terminal_state_the_store_refuses_is_written_again_and_only_then_announced(serve):
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
