"""Cross-origin access for browser clients, on a stream and an error (jobd.web.cors)."""

from __future__ import annotations

from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)


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
