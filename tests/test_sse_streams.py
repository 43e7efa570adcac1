"""Open streams over real connections: how a stream that cannot go on ends (jobd.web.sse.streams)."""

from __future__ import annotations

import asyncio
import json
import socket

import structlog
from conftest import wait_for
from openapi_check import schema_errors
from ssehelp import Served, serve  # noqa: F401  (serve is a fixture)

from jobd.web.sse import STREAMS


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
