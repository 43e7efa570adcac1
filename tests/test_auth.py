"""Tokens and scopes: read ⊂ trigger ⊂ admin; every refusal is problem+json."""

from __future__ import annotations

import asyncio

import pytest
from conftest import BACKENDS

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

TOKENS = {
    "tokens": [
        {"name": "viewer", "token": "read-token-123", "scope": "read"},
        {"name": "ci", "token": "trigger-token-123", "scope": "trigger"},
        {"name": "ops", "token": "admin-token-123", "scope": "admin"},
    ]
}
JOBS = {"noop": {"handler": "sample_jobs:noop", "overlap": "allow"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def h(start_daemon):
    return await start_daemon(JOBS, auth=TOKENS)


async def expect_problem(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    return await response.json()


async def test_missing_and_invalid_tokens_are_401(h):
    for response in (
        await h.client.get("/api/v1/jobs"),
        await h.client.get("/api/v1/jobs", headers=bearer("wrong-token-xyz")),
        await h.client.get("/api/v1/jobs", headers=bearer("read-token-12")),  # a prefix of a real token
        await h.client.get("/api/v1/jobs", headers=bearer("read-token-1234")),  # one character more
        await h.client.get("/api/v1/jobs", headers={"Authorization": "Basic cmVhZC10b2tlbi0xMjM="}),
        await h.client.post("/api/v1/jobs/noop/trigger"),
    ):
        await expect_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_that_is_not_utf8_is_401(h):
    # Header bytes that do not decode as UTF-8 reach jobd as surrogates: still just a wrong token.
    server = h.client.server
    for header in (b"Authorization: Bearer \xb2\xff-token", b"X-API-Key: \xb2\xff-token"):
        for path in (b"/api/v1/jobs", b"/metrics"):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401 "), (header, path, answer[:200])
            assert b"application/problem+json" in answer


async def test_health_is_public(h):
    assert (await h.client.get("/healthz")).status == 200
    assert (await h.client.get("/api/v1/readyz")).status == 200


@pytest.mark.parametrize(
    ("token", "method", "path", "allowed"),
    [
        ("read-token-123", "GET", "/api/v1/jobs", True),
        ("read-token-123", "GET", "/api/v1/queue", True),
        ("read-token-123", "POST", "/api/v1/jobs/noop/trigger", False),
        ("read-token-123", "POST", "/api/v1/jobs/noop/pause", False),
        ("trigger-token-123", "POST", "/api/v1/jobs/noop/trigger", True),
        ("trigger-token-123", "GET", "/api/v1/runs", True),
        ("trigger-token-123", "POST", "/api/v1/jobs/noop/pause", False),
        ("admin-token-123", "POST", "/api/v1/jobs/noop/pause", True),
        ("admin-token-123", "POST", "/api/v1/jobs/noop/trigger", True),
    ],
)
async def test_scopes(h, token, method, path, allowed):
    response = await h.client.request(method, path, headers=bearer(token))
    if allowed:
        assert response.status < 300, await response.text()
    else:
        problem = await expect_problem(response, 403)
        assert "scope" in problem["detail"]


async def test_x_api_key_header_works(h):
    response = await h.client.post("/api/v1/jobs/noop/trigger", headers={"X-API-Key": "trigger-token-123"})
    assert response.status == 202


async def test_cancel_and_retry_need_trigger_scope(h):
    run = (await (await h.client.post("/api/v1/jobs/noop/trigger", headers=bearer("admin-token-123"))).json())["run"]
    await h.finished(run["id"])
    await expect_problem(await h.client.post(f"/api/v1/runs/{run['id']}/retry", headers=bearer("read-token-123")), 403)
    response = await h.client.post(f"/api/v1/runs/{run['id']}/retry", headers=bearer("trigger-token-123"))
    assert response.status == 202


async def test_tokens_never_reach_the_log(start_daemon, capsys):
    h = await start_daemon(JOBS, auth=TOKENS)
    await h.client.get("/api/v1/jobs?token=admin-token-123", headers=bearer("admin-token-123"))
    await h.client.get(
        "/api/v1/jobs?x=1&access_token=admin-token-123&API_KEY=admin-token-123",
        headers={"X-API-Key": "admin-token-123"},
    )
    await h.client.get("/api/v1/nothing?key=admin-token-123")
    await h.client.get("/api/v1/jobs", headers=bearer("wrong-token-xyz"))
    out = capsys.readouterr()
    assert "admin-token-123" not in out.out + out.err
    assert "wrong-token-xyz" not in out.out + out.err
    assert "request" in out.out + out.err
