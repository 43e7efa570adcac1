"""Stream tickets over real connections: minted with a token, good for one stream (jobd.web.tickets)."""

from __future__ import annotations

from typing import Any

import structlog
from conftest import wait_for
from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)

from jobd.web.tickets import TICKETS

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
