"""The dashboard's server side: its files, their security headers, and /whoami."""

from __future__ import annotations

import pytest
from aiohttp import web

from jobd.web.routes.dashboard import STATIC_DIR
from jobd.web.routes.whoami import served_features

JOBS = {"noop": {"handler": "sample_jobs:noop"}}
TOKENS = {
    "tokens": [
        {"name": "viewer", "token": "read-token-123", "scope": "read"},
        {"name": "ops", "token": "admin-token-123", "scope": "admin"},
    ]
}


async def test_the_page_and_its_files_are_served_with_a_strict_policy(start_daemon):
    h = await start_daemon(JOBS)
    page = await h.client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script type="module" src="/static/app.js">' in html
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = await h.client.get("/static/app.js")
    assert script.status == 200
    assert script.content_type in ("application/javascript", "text/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    # The API's own answers are not the dashboard's: no page policy on them.
    assert "Content-Security-Policy" not in (await h.client.get("/api/v1/jobs")).headers


async def test_nothing_outside_the_static_folder_is_served(start_daemon):
    h = await start_daemon(JOBS)
    assert (await h.client.get("/static/missing.js")).status == 404
    assert (await h.client.get("/static/../web/api.py")).status in (403, 404)
    assert (await h.client.get("/static/%2e%2e/web/api.py")).status in (403, 404)


def test_the_page_loads_nothing_from_another_origin():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path.name
        assert "https://" not in text, path.name


async def test_whoami_without_auth_is_admin(start_daemon):
    h = await start_daemon(JOBS)
    data = await h.get_json("/api/v1/whoami")
    assert data["auth"] is False and data["scope"] == "admin" and data["token"] is None
    assert {"events", "run_events", "tickets"} <= set(data["features"])


@pytest.mark.parametrize(
    ("token", "scope", "name"), [("read-token-123", "read", "viewer"), ("admin-token-123", "admin", "ops")]
)
async def test_whoami_tells_the_token_scope(start_daemon, token, scope, name):
    h = await start_daemon(JOBS, auth=TOKENS)
    response = await h.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    data = await response.json()
    assert (data["auth"], data["scope"], data["token"]) == (True, scope, name)


async def test_whoami_without_a_token_is_401(start_daemon):
    h = await start_daemon(JOBS, auth=TOKENS)
    response = await h.client.get("/api/v1/whoami")
    assert response.status == 401
    assert response.content_type == "application/problem+json"


def test_features_are_the_optional_routes_the_app_has():
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    assert served_features(app) == []
    app.router.add_get("/api/v1/stats", handler)
    app.router.add_get("/api/v1/runs/{run_id}/events", handler)
    app.router.add_get("/api/v1/eventsx", handler)
    assert served_features(app) == ["run_events", "stats"]
