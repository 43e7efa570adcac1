"""Open streams over real connections: heartbeats, limits, slow, gone and lagging clients, shutdown
(jobd.web.sse.streams)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import structlog
from conftest import BACKENDS, sqlite_only, wait_for
from openapi_check import schema_errors
from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)

from jobd.web.sse import STREAMS

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


async def raw_stream(s: Served, path: str) -> socket.socket:
    """A client with a tiny receive buffer that sends its request and then does not read."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, s.runner.addresses[0][:2])
    await loop.sock_sendall(client, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


async def read_until(client: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    """Everything the client has been sent, up to the end of the message holding `marker`."""
    received = b""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while marker not in received or b"\n\n" not in received[received.index(marker) :]:
            chunk = await loop.sock_recv(client, 65536)
            assert chunk, f"the connection closed before {marker!r}: ...{received[-300:]!r}"
            received += chunk
    return received


def messages(raw: bytes) -> list[dict]:
    """The JSON of every `data:` line, in order (the chunk framing aside)."""
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_a_client_that_falls_behind_gets_an_error_before_it_is_cut_off(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(
        events={"subscriber_buffer": 4}, server={"sse_heartbeat_s": 0.1}, log=structlog.wrap_logger(cap, processors=[])
    )
    run_id, steps = await s.stepper()
    client = await raw_stream(s, f"/api/v1/runs/{run_id}/events?log=1")
    try:
        await wait_for(lambda: s.daemon.bus.subscriber_count == 1)
        sent = 0
        while s.daemon.bus.dropped == 0:
            assert sent < 3000, "the client was never cut off"
            sent += 1
            await steps.put(("log", f"{sent:05d} " + "x" * 30_000))
            await wait_for(lambda: s.daemon.bus.published >= sent)
        # The client reads only now: what it was sent, then why the stream ends.
        received = messages(await read_until(client, b'"type":"error"'))
        error = received[-1]
        assert error["type"] == "error" and error["reason"] == "lagging", error
        assert "Last-Event-ID" in error["message"]
        assert schema_errors("components/schemas/StreamMessage", error) == []
        lines = [m["line"][:5] for m in received if m["type"] == "log"]
        assert lines == [f"{i:05d}" for i in range(1, len(lines) + 1)]  # in order, none twice, then the cut
        assert len(lines) < sent
        assert any(call.kwargs.get("event") == "stream_cut_off" for call in cap.calls)
        await wait_for(lambda: len(s.app[STREAMS]) == 0 and s.daemon.bus.subscriber_count == 0)
    finally:
        client.close()
        await steps.put(None)


async def test_a_client_that_stops_reading_gets_an_error_and_its_connection_is_cut(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(server={"sse_heartbeat_s": 0.1}, log=structlog.wrap_logger(cap, processors=[]))
    run_id, steps = await s.stepper()
    client = await raw_stream(s, f"/api/v1/runs/{run_id}/events?log=1")
    try:
        await wait_for(lambda: s.daemon.bus.subscriber_count == 1)
        sent = 0
        while not any(stream.behind_since is not None for stream in s.app[STREAMS]):
            assert sent < 3000, "the stream never noticed its client was not reading"
            sent += 1  # until the socket is full and the rest waits: the stream waits for its client
            await steps.put(("log", f"{sent:05d} " + "x" * 30_000))
            await wait_for(lambda: s.daemon.bus.published >= sent)
        # Never read: after the stuck limit it is told why, then its connection is cut.
        await wait_for(lambda: len(s.app[STREAMS]) == 0, timeout=20)
        assert s.daemon.bus.subscriber_count == 0
        cuts = [call.kwargs for call in cap.calls if call.kwargs.get("event") == "stream_cut_off"]
        assert [cut["reason"] for cut in cuts] == ["stopped reading and was cut off"]
    finally:
        client.close()
        await steps.put(None)


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


async def test_idle_streams_cause_no_store_queries(serve, backend):
    sqlite_only(backend, "counts SQLite store queries")
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
