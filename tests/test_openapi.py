"""The OpenAPI document against the app: the same routes, and real responses that match it."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from jsonschema import Draft202012Validator
from openapi_check import (
    DOC,
    NOT_YET_SERVED,
    OUTPUT,
    app_operations,
    check_response,
    documented_operations,
    every_schema,
    template_for,
)

from jobd.app import Daemon
from jobd.web import create_app, sse

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {
    "read": "read-token-123",
    "trigger": "trigger-token-123",
    "admin": "admin-token-123",
    "limited": "limited-token-123",  # admin, limited to the job `hourly`
}


def test_the_committed_document_is_what_the_generator_writes():
    generator = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "openapi_gen.py"), "--check"], capture_output=True, text=True
    )
    assert generator.returncode == 0, generator.stderr


def test_the_document_is_well_formed():
    assert DOC["openapi"].startswith("3.1")
    for name, schema in every_schema():
        Draft202012Validator.check_schema(schema)
    ids = [op["operationId"] for op in documented_operations().values()]
    assert len(ids) == len(set(ids))
    text = OUTPUT.read_text(encoding="utf-8")
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in DOC["components"]["schemas"], ref
    for (method, path), op in documented_operations().items():
        params = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
        assert params == {piece[1:-1] for piece in path.split("/") if piece.startswith("{")}, (method, path)


async def test_every_route_is_documented_and_every_documented_route_is_served(make_config):
    app = create_app(Daemon(make_config({"noop": {"handler": "sample_jobs:noop"}}), environ={}))
    served = app_operations(app)
    documented = documented_operations()
    print(f"documented but served by other branches, not here yet: {sorted(NOT_YET_SERVED)}")
    assert set(served) - set(documented) == set(), "routes missing from scripts/openapi_gen.py"
    assert set(documented) - set(served) == NOT_YET_SERVED, "documented routes the app does not serve"
    assert set(documented) >= NOT_YET_SERVED
    for key, handler in served.items():
        assert getattr(handler, "jobd_scope", None) == documented[key].get("x-jobd-scope"), key


# -- conformance: real requests, every endpoint, successes and errors -------------------------------


class Recorder:
    """Sends requests as a client would and checks every response against the document."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: dict[tuple[str, str], set[int]] = defaultdict(set)

    async def call(self, method: str, path: str, expect: int, *, token: str | None = "admin", **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {TOKENS[token]}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        if response.content_type == "text/event-stream":
            body = await response.content.readany()  # the opening messages; a stream may never end
            response.close()
        else:
            body = await response.read()
        assert response.status == expect, (method, path, response.status, body[:300])
        if 400 <= response.status < 500:
            assert response.content_type == "application/problem+json", (method, path)
        template = check_response(method, path, response.status, response.content_type, body)
        self.seen[(method, template)].add(response.status)
        return await response.json() if response.content_type.endswith("json") else body


async def test_responses_match_the_document(start_daemon):
    h = await start_daemon(
        {
            "noop": {"handler": "sample_jobs:noop", "overlap": "allow"},
            "slow": {"handler": "sample_jobs:sleepy"},
            "never": {"handler": "sample_jobs:noop"},
            "hourly": {"handler": "sample_jobs:noop", "schedule": "0 * * * *"},
        },
        auth={
            "tokens": [
                {"name": name, "token": token, "scope": name} for name, token in TOKENS.items() if name != "limited"
            ]
            + [{"name": "limited", "token": TOKENS["limited"], "scope": "admin", "jobs": ["hourly"]}]
        },
        server={"max_body_bytes": 4096, "max_streams": 1},
        notifiers={"ok": {"kind": "command", "argv": ["true"]}, "down": {"kind": "command", "argv": ["false"]}},
    )
    r = Recorder(h.client)
    for path in (
        "/healthz",
        "/readyz",
        "/api/v1/healthz",
        "/api/v1/readyz",
        "/api/docs",
        "/api/v1/openapi.json",
        "/",
        "/static/api-docs.js",
        "/static/api-docs.css",
    ):
        await r.call("GET", path, 200, token=None)
    await r.call("GET", "/static/nothing.js", 404, token=None)
    await r.call("GET", "/api/v1/whoami", 200, token="read")
    await r.call("GET", "/metrics", 200, token="read")
    await r.call("GET", "/metrics", 401, token=None)

    # jobs
    await r.call("GET", "/api/v1/jobs", 200, token="read")
    await r.call("GET", "/api/v1/jobs/noop", 200)
    await r.call("GET", "/api/v1/jobs/nope", 404)
    single = (
        await r.call(
            "POST",
            "/api/v1/jobs/noop/trigger",
            202,
            token="trigger",
            json={"params": {"n": 1}},
            headers={"Idempotency-Key": "k-1"},
        )
    )["run"]
    batch = (await r.call("POST", "/api/v1/jobs/noop/trigger", 202, json={"runs": [{"params": {}}, {}]}))["runs"]
    await r.call("POST", "/api/v1/jobs/noop/trigger", 400, data=b"{oops")
    await r.call("POST", "/api/v1/jobs/noop/trigger", 413, data=b'{"params": {"x": "' + b"y" * 5000 + b'"}}')
    await r.call("POST", "/api/v1/jobs/nope/trigger", 404)
    slow = (await r.call("POST", "/api/v1/jobs/slow/trigger", 202, json={"params": {"seconds": 30}}))["run"]
    await r.call("POST", "/api/v1/jobs/slow/trigger", 409)
    await r.call("POST", "/api/v1/jobs/noop/pause", 200)
    await r.call("POST", "/api/v1/jobs/noop/resume", 200)
    await r.call("POST", "/api/v1/jobs/nope/pause", 404)
    await r.call("POST", "/api/v1/jobs/nope/resume", 404)
    span = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T03:00:00Z"}
    await r.call("POST", "/api/v1/jobs/hourly/backfill", 200, json={**span, "dry_run": True})
    filled = (await r.call("POST", "/api/v1/jobs/hourly/backfill", 202, json=span))["runs"]
    await r.call("POST", "/api/v1/jobs/hourly/backfill", 400, json={**span, "max_runs": 2})
    await r.call("POST", "/api/v1/jobs/hourly/backfill", 413, data=b'{"from": "' + b"y" * 5000 + b'"}')
    await r.call("POST", "/api/v1/jobs/nope/backfill", 404, json=span)
    await r.call("POST", "/api/v1/jobs/noop/backfill", 409, json=span)
    for run in (single, *batch, *filled):
        await h.finished(run["id"])
    await r.call("GET", "/api/v1/jobs", 200)  # now with last runs

    # runs
    page = await r.call("GET", "/api/v1/runs?limit=2", 200)
    await r.call("GET", f"/api/v1/runs?limit=2&cursor={page['pagination']['next_cursor']}", 200)
    await r.call(
        "GET", "/api/v1/runs?job=noop&status=COMPLETED,FAILED&triggered_by=api&since=2020-01-01T00:00:00Z", 200
    )
    await r.call("GET", "/api/v1/runs?limit=0", 400)
    await r.call("GET", "/api/v1/runs/last?job=noop", 200)
    await r.call("GET", "/api/v1/runs/last", 400)
    await r.call("GET", "/api/v1/runs/last?job=never", 404)
    await r.call("GET", f"/api/v1/runs/{single['id']}", 200)
    await r.call("GET", f"/api/v1/runs/{slow['id']}", 200)  # active: a live log tail
    await r.call("GET", "/api/v1/runs/999999", 404)
    await r.call("GET", f"/api/v1/runs/{single['id']}/log", 200)
    await r.call("GET", "/api/v1/runs/999999/log", 404)
    await r.call("POST", f"/api/v1/runs/{single['id']}/retry", 202)
    await r.call("POST", f"/api/v1/runs/{slow['id']}/retry", 409)
    await r.call("POST", "/api/v1/runs/999999/retry", 404)
    await r.call("POST", f"/api/v1/runs/{slow['id']}/cancel", 200)
    await r.call("POST", f"/api/v1/runs/{slow['id']}/cancel", 409)
    await r.call("POST", "/api/v1/runs/999999/cancel", 404)
    await r.call("GET", "/api/v1/queue", 200)
    await r.call("GET", "/api/v1/nodes", 200)

    # streams, and tickets for them
    streams = h.client.app[sse.STREAMS]
    done = f"/api/v1/runs/{single['id']}/events"
    ticket = (await r.call("POST", "/api/v1/tickets", 201, token="read", json={"stream": done}))["ticket"]
    await r.call("POST", "/api/v1/tickets", 403, token="read", json={"stream": "/api/v1/events"})
    await r.call("POST", "/api/v1/tickets", 400, json={"stream": "/api/v1/jobs"})
    await r.call("GET", f"{done}?ticket={ticket}", 200, token=None)
    await r.call("GET", f"/api/v1/runs/{single['id']}", 200, headers={"Accept": "text/event-stream"})
    for path in (done, f"/api/v1/runs/{single['id']}"):
        await r.call(
            "GET", path, 204, headers={"Accept": "text/event-stream", "Last-Event-ID": str(h.daemon.bus.last_id)}
        )
    await r.call("GET", "/api/v1/runs/999999/events", 404)
    await r.call("GET", "/api/v1/events?status=DONE", 400)
    await wait_for(lambda: len(streams) == 0)
    async with h.client.get("/api/v1/events?log=1", headers={"Authorization": f"Bearer {TOKENS['admin']}"}) as held:
        await held.content.readany()
        await r.call("GET", "/api/v1/events", 503)  # server.max_streams = 1
        await r.call("GET", done, 503)
        await r.call("GET", f"/api/v1/runs/{single['id']}", 503, headers={"Accept": "text/event-stream"})
    await wait_for(lambda: len(streams) == 0)
    await r.call("GET", "/api/v1/events", 200)
    await wait_for(lambda: len(streams) == 0)
    await r.call("GET", "/api/v1/stats", 200)
    await r.call("GET", "/api/v1/stats?job=noop&days=3", 200)
    await r.call("GET", "/api/v1/stats?days=0", 400)
    await r.call("GET", "/api/v1/stats?job=nope", 404)

    # notifications
    await r.call("GET", "/api/v1/notifications?job=noop&status=pending,delivered&limit=1", 200)
    await r.call("GET", "/api/v1/notifications?status=lost", 400)
    await r.call("POST", "/api/v1/notifiers/ok/test", 200)
    await r.call("POST", "/api/v1/notifiers/down/test", 502)
    await r.call("POST", "/api/v1/notifiers/nope/test", 404)
    await r.call("POST", "/api/v1/jobs/noop/snooze", 200, json={"until": "2030-01-01T00:00:00Z"})
    await r.call("POST", "/api/v1/jobs/noop/snooze", 400, json={"until": 5})
    await r.call("POST", "/api/v1/jobs/noop/snooze", 413, data=b'{"until": "' + b"y" * 5000 + b'"}')
    await r.call("POST", "/api/v1/jobs/nope/snooze", 404, json={"until": None})
    await r.call("DELETE", "/api/v1/jobs/noop/snooze", 200)
    await r.call("DELETE", "/api/v1/jobs/nope/snooze", 404)
    # a token limited to some jobs, and the audit log
    await r.call("GET", "/metrics", 403, token="limited")
    await r.call("POST", "/api/v1/tickets", 404, token="limited", json={"stream": done})
    await r.call("GET", "/api/v1/audit?action=trigger,cancel&limit=3", 200)
    await r.call("GET", "/api/v1/audit?action=launch", 400)

    # auth, for every operation that needs a scope: none → 401, one below → 403
    served = set(documented_operations()) - NOT_YET_SERVED
    for method, template in sorted(served):
        scope = DOC["paths"][template][method.lower()].get("x-jobd-scope")
        if scope is None:
            continue
        path = template.replace("{name}", "noop").replace("{run_id}", str(single["id"]))
        await r.call(method, path, 401, token=None)
        if scope != "read":
            await r.call(method, path, 403, token="read" if scope == "trigger" else "trigger")

    # stopping: not ready, and no new runs
    await wait_for(lambda: not h.daemon.runs.active)
    await h.daemon.drain(grace_s=0)
    for path in ("/readyz", "/api/v1/readyz"):
        await r.call("GET", path, 503, token=None)
    await r.call("POST", "/api/v1/jobs/noop/trigger", 503)
    await r.call("POST", f"/api/v1/runs/{single['id']}/retry", 503)
    await r.call("POST", "/api/v1/jobs/hourly/backfill", 503, json=span)

    missing = {
        (method, template): sorted(
            set(map(int, DOC["paths"][template][method.lower()]["responses"])) - r.seen[(method, template)]
        )
        for method, template in served
    }
    assert {key: codes for key, codes in missing.items() if codes} == {}


@pytest.mark.parametrize(
    "path, template",
    [
        ("/api/v1/runs/last", "/api/v1/runs/last"),
        ("/api/v1/runs/12", "/api/v1/runs/{run_id}"),
        ("/api/v1/runs/12/log", "/api/v1/runs/{run_id}/log"),
        ("/api/v1/runs/", None),
        ("/", "/"),
        ("/api/docs", "/api/docs"),
        ("/nope", None),
    ],
)
def test_template_matching(path, template):
    assert template_for(path) == template


def _requirements(document: dict[str, Any]) -> dict[str, Any]:
    """Where the document asks for credentials: at the top, and per operation."""
    found = {"(top)": document.get("security")}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if "security" in op:
                found[f"{method.upper()} {path}"] = op["security"]
    return {where: security for where, security in found.items() if security is not None}


async def test_the_served_document_asks_for_tokens_only_when_there_are_some(start_daemon, tmp_path):
    jobs = {"noop": {"handler": "sample_jobs:noop"}}
    tokens = {"auth": {"tokens": [{"name": "ops", "token": "admin-token-123", "scope": "admin"}]}}

    def store(name: str) -> dict[str, str]:
        return {"path": str(tmp_path / name / "jobd.db")}

    with_tokens = await start_daemon(jobs, **tokens, server={"max_batch_runs": 7}, store=store("a"))
    served = await with_tokens.get_json("/api/v1/openapi.json")
    assert _requirements(served)["(top)"] == [{"bearer": []}, {"apiKey": []}]
    assert _requirements(served)["GET /healthz"] == []  # public
    assert set(served["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    # The batch limit is the daemon's own.
    assert served["components"]["schemas"]["TriggerRequest"]["properties"]["runs"]["maxItems"] == 7

    without = await start_daemon(jobs, store=store("b"))
    served = await without.get_json("/api/v1/openapi.json")
    assert _requirements(served) == {}
    assert "securitySchemes" not in served["components"]
    for (method, path), op in documented_operations(served).items():
        assert "security" not in op, (method, path)

    scrape_only = await start_daemon(jobs, metrics={"token": "metrics-token-123"}, store=store("c"))
    served = await scrape_only.get_json("/api/v1/openapi.json")
    assert _requirements(served) == {"GET /metrics": [{"bearer": []}, {"apiKey": []}]}
    assert set(served["components"]["securitySchemes"]) == {"bearer", "apiKey"}
