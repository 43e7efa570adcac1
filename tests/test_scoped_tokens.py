"""Tokens limited to some jobs (`jobs = ["backup-*"]`): on every route of the app and on the
streams, other jobs and their runs do not exist for them (404), and lists leave them out.

The table below has a case for every route the app serves: a new route without one fails
`test_every_route_has_a_case`, so that whoever adds it decides what a limited token gets from it."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import BACKENDS, Harness, wait_for
from ssehelp import SSEReader

from jobd.web import scope as scope_module

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

OPS, LIMITED, LIMITED_ADMIN = "ops-token-123", "backup-token-123", "backupadm-token-123"
TOKENS = {
    "tokens": [
        {"name": "ops", "token": OPS, "scope": "admin"},
        {"name": "backups", "token": LIMITED, "scope": "trigger", "jobs": ["backup-*"]},
        {"name": "backup-admin", "token": LIMITED_ADMIN, "scope": "admin", "jobs": ["backup-*", "nothing-?"]},
    ]
}
HOURLY = "0 * * * *"
JOBS = {
    "backup-db": {"handler": "sample_jobs:noop", "overlap": "allow"},
    "backup-files": {"handler": "sample_jobs:noop", "overlap": "allow", "schedule": HOURLY},
    "secret": {"handler": "sample_jobs:noop", "overlap": "allow", "schedule": HOURLY},
}
MINE = {"backup-db", "backup-files"}
SPAN = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T03:00:00Z", "dry_run": True}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclasses.dataclass
class World:
    h: Harness
    mine: int  # a finished run of backup-db
    other: int  # a finished run of secret

    async def call(
        self, method: str, path: str, expect: int, token: str = LIMITED, **kwargs: Any
    ) -> dict[str, Any] | str:
        headers = {**bearer(token), **kwargs.pop("headers", {})}
        response = await self.h.client.request(method, path, headers=headers, **kwargs)
        if response.content_type == "text/event-stream":
            body: Any = (await response.content.readany()).decode()
            response.close()
        else:
            body = await response.json() if response.content_type.endswith("json") else await response.text()
        assert response.status == expect, (method, path, response.status, body)
        if response.status == 404:
            assert response.content_type == "application/problem+json"
        return body  # type: ignore[no-any-return]


@pytest.fixture
async def world(start_daemon) -> World:
    h = await start_daemon(
        JOBS,
        auth=TOKENS,
        server={"sse_heartbeat_s": 0.2},
        notifiers={"log": {"kind": "command", "argv": [sys.executable, "-c", "pass"]}},
        defaults={"notify": {"on_success": ["log"]}},
    )
    mine = (await h.trigger("backup-db", headers=bearer(OPS)))["id"]
    other = (await h.trigger("secret", headers=bearer(OPS)))["id"]
    for run_id in (mine, other):
        await h.finished(run_id)
    return World(h, mine, other)


# -- one case per route -----------------------------------------------------------------------------


async def jobs_list(w: World) -> None:
    listed = await w.call("GET", "/api/v1/jobs", 200)
    assert {job["name"] for job in listed["jobs"]} == MINE


async def one_job(w: World) -> None:
    await w.call("GET", "/api/v1/jobs/secret", 404)
    await w.call("HEAD", "/api/v1/jobs/secret", 404)
    await w.call("GET", "/api/v1/jobs/nope", 404)
    assert (await w.call("GET", "/api/v1/jobs/backup-db", 200))["job"]["name"] == "backup-db"


async def trigger(w: World) -> None:
    await w.call("POST", "/api/v1/jobs/secret/trigger", 404, json={})
    run = (await w.call("POST", "/api/v1/jobs/backup-db/trigger", 202, json={}))["run"]
    await w.h.finished(run["id"])


async def backfill(w: World) -> None:
    await w.call("POST", "/api/v1/jobs/secret/backfill", 404, json=SPAN)
    assert (await w.call("POST", "/api/v1/jobs/backup-files/backfill", 200, json=SPAN))["dry_run"] is True


def pause_or_resume(action: str) -> Callable[[World], Awaitable[None]]:
    async def case(w: World) -> None:
        await w.call("POST", f"/api/v1/jobs/secret/{action}", 404, token=LIMITED_ADMIN)
        await w.call("POST", f"/api/v1/jobs/backup-files/{action}", 200, token=LIMITED_ADMIN)
        assert not w.h.daemon.runs.job_state("secret").paused

    return case


async def runs_list(w: World) -> None:
    page = await w.call("GET", "/api/v1/runs", 200)
    assert page["runs"] and {run["job"] for run in page["runs"]} <= MINE
    assert page["pagination"]["total"] == len(page["runs"]) == page["statistics"]["runs"]
    assert (await w.call("GET", "/api/v1/runs", 200, token=OPS))["pagination"]["total"] > page["pagination"]["total"]
    other = await w.call("GET", "/api/v1/runs?job=secret", 200)
    assert other["runs"] == [] and other["pagination"]["total"] == 0 and other["statistics"]["runs"] == 0
    since = await w.call("GET", "/api/v1/runs?since=2020-01-01T00:00:00Z&status=COMPLETED", 200)
    assert {run["job"] for run in since["runs"]} <= MINE and since["statistics"]["runs"] == len(since["runs"])


async def last_run(w: World) -> None:
    await w.call("GET", "/api/v1/runs/last?job=secret", 404)
    assert (await w.call("GET", "/api/v1/runs/last?job=backup-db", 200))["run"]["job"] == "backup-db"


async def one_run(w: World) -> None:
    await w.call("GET", f"/api/v1/runs/{w.other}", 404)
    await w.call("HEAD", f"/api/v1/runs/{w.other}", 404)
    await w.call("GET", f"/api/v1/runs/{w.other}", 404, headers={"Accept": "text/event-stream"})
    await w.call("GET", "/api/v1/runs/999999", 404)
    assert (await w.call("GET", f"/api/v1/runs/{w.mine}", 200))["run"]["id"] == w.mine
    opened = await w.call("GET", f"/api/v1/runs/{w.mine}", 200, headers={"Accept": "text/event-stream"})
    assert '"type":"connected"' in opened


async def run_log(w: World) -> None:
    await w.call("GET", f"/api/v1/runs/{w.other}/log", 404)
    await w.call("GET", f"/api/v1/runs/{w.mine}/log", 200)


async def cancel(w: World) -> None:
    await w.call("POST", f"/api/v1/runs/{w.other}/cancel", 404)
    await w.call("POST", f"/api/v1/runs/{w.mine}/cancel", 409)  # finished: it exists for this token


async def retry(w: World) -> None:
    await w.call("POST", f"/api/v1/runs/{w.other}/retry", 404)
    run = (await w.call("POST", f"/api/v1/runs/{w.mine}/retry", 202))["run"]
    await w.h.finished(run["id"])


async def run_stream(w: World) -> None:
    await w.call("GET", f"/api/v1/runs/{w.other}/events", 404)
    assert '"type":"connected"' in await w.call("GET", f"/api/v1/runs/{w.mine}/events", 200)


async def firehose(w: World) -> None:
    await w.call("GET", "/api/v1/events", 403)  # a trigger token: below the firehose's admin
    opened = await w.call("GET", "/api/v1/events", 200, token=LIMITED_ADMIN)
    assert "secret" not in opened and '"type":"summary"' not in opened


async def queue(w: World) -> None:
    limited = await w.call("GET", "/api/v1/queue", 200)
    everything = await w.call("GET", "/api/v1/queue", 200, token=OPS)
    runs = (await w.call("GET", "/api/v1/runs", 200))["pagination"]["total"]
    assert sum(limited["counts"].values()) == runs < sum(everything["counts"].values())
    assert limited["workers"] == everything["workers"]


async def stats(w: World) -> None:
    limited = await w.call("GET", "/api/v1/stats", 200)
    assert {job["job"] for job in limited["jobs"]} == MINE
    runs = (await w.call("GET", "/api/v1/runs", 200))["pagination"]["total"]
    assert limited["total"] == runs == sum(day["total"] for day in limited["timeline"])
    assert limited["total"] < (await w.call("GET", "/api/v1/stats", 200, token=OPS))["total"]
    await w.call("GET", "/api/v1/stats?job=secret", 404)
    assert (await w.call("GET", "/api/v1/stats?job=backup-db", 200))["job"] == "backup-db"


async def tickets(w: World) -> None:
    await w.call("POST", "/api/v1/tickets", 404, json={"stream": f"/api/v1/runs/{w.other}/events"})
    await w.call("POST", "/api/v1/tickets", 404, json={"stream": f"/api/v1/runs/{w.other}"})
    await w.call("POST", "/api/v1/tickets", 403, json={"stream": "/api/v1/events"})
    minted = await w.call("POST", "/api/v1/tickets", 201, json={"stream": f"/api/v1/runs/{w.mine}/events"})
    response = await w.h.client.get(f"/api/v1/runs/{w.mine}/events?ticket={minted['ticket']}")
    assert response.status == 200
    response.close()


async def whoami(w: World) -> None:
    answer = await w.call("GET", "/api/v1/whoami", 200)
    assert answer["token"] == "backups" and answer["jobs"] == ["backup-*"]
    assert (await w.call("GET", "/api/v1/whoami", 200, token=OPS))["jobs"] is None


async def nodes(w: World) -> None:
    assert (await w.call("GET", "/api/v1/nodes", 200))["nodes"]


async def metrics(w: World) -> None:
    await w.call("GET", "/metrics", 403)
    await w.call("GET", "/metrics", 403, token=LIMITED_ADMIN)
    await w.call("GET", "/metrics", 200, token=OPS)


async def audit(w: World) -> None:
    await w.call("GET", "/api/v1/audit", 403)  # trigger scope
    await w.call("POST", "/api/v1/jobs/secret/trigger", 202, token=OPS, json={})
    await w.call("POST", "/api/v1/jobs/backup-db/trigger", 202, token=OPS, json={})
    records = (await w.call("GET", "/api/v1/audit", 200, token=LIMITED_ADMIN))["records"]
    assert records and {record["job"] for record in records} <= MINE
    assert "secret" in {record["job"] for record in (await w.call("GET", "/api/v1/audit", 200, token=OPS))["records"]}
    await wait_for(lambda: not w.h.daemon.runs.active)


async def notifications(w: World) -> None:
    everything = await wait_for(
        lambda: notification_jobs(w, OPS, want={"backup-db", "secret"}), timeout=15
    )  # each finished run's on_success notification
    assert everything == {"backup-db", "secret"}
    assert await notification_jobs(w, LIMITED) == {"backup-db"}
    assert await notification_jobs(w, LIMITED, "?job=secret") == set()


async def notification_jobs(w: World, token: str, query: str = "", want: set[str] | None = None) -> set[str] | None:
    listed = await w.call("GET", f"/api/v1/notifications{query}", 200, token=token)
    found = {item["job"] for item in listed["notifications"]}
    return found if want is None or found == want else None


async def notifier_test(w: World) -> None:
    await w.call("POST", "/api/v1/notifiers/log/test", 403, token=LIMITED_ADMIN)
    await w.call("POST", "/api/v1/notifiers/log/test", 200, token=OPS)


async def snooze(w: World) -> None:
    until = {"until": "2030-01-01T00:00:00Z"}
    await w.call("POST", "/api/v1/jobs/secret/snooze", 404, token=LIMITED_ADMIN, json=until)
    await w.call("DELETE", "/api/v1/jobs/secret/snooze", 404, token=LIMITED_ADMIN)
    mine = await w.call("POST", "/api/v1/jobs/backup-db/snooze", 200, token=LIMITED_ADMIN, json=until)
    assert mine["snoozed_until"] == "2030-01-01T00:00:00.000Z"
    assert (await w.call("DELETE", "/api/v1/jobs/backup-db/snooze", 200, token=LIMITED_ADMIN))["snoozed_until"] is None


def public(path: str) -> Callable[[World], Awaitable[None]]:
    async def case(w: World) -> None:
        await w.call("GET", path, 200)

    return case


CASES: dict[tuple[str, str], Callable[[World], Awaitable[None]]] = {
    ("GET", "/api/v1/jobs"): jobs_list,
    ("GET", "/api/v1/jobs/{name}"): one_job,
    ("POST", "/api/v1/jobs/{name}/trigger"): trigger,
    ("POST", "/api/v1/jobs/{name}/backfill"): backfill,
    ("POST", "/api/v1/jobs/{name}/pause"): pause_or_resume("pause"),
    ("POST", "/api/v1/jobs/{name}/resume"): pause_or_resume("resume"),
    ("GET", "/api/v1/runs"): runs_list,
    ("GET", "/api/v1/runs/last"): last_run,
    ("GET", "/api/v1/runs/{run_id}"): one_run,
    ("GET", "/api/v1/runs/{run_id}/log"): run_log,
    ("POST", "/api/v1/runs/{run_id}/cancel"): cancel,
    ("POST", "/api/v1/runs/{run_id}/retry"): retry,
    ("GET", "/api/v1/runs/{run_id}/events"): run_stream,
    ("GET", "/api/v1/events"): firehose,
    ("GET", "/api/v1/queue"): queue,
    ("GET", "/api/v1/stats"): stats,
    ("POST", "/api/v1/tickets"): tickets,
    ("GET", "/api/v1/whoami"): whoami,
    ("GET", "/api/v1/nodes"): nodes,
    ("GET", "/metrics"): metrics,
    ("GET", "/api/v1/audit"): audit,
    ("GET", "/api/v1/notifications"): notifications,
    ("POST", "/api/v1/notifiers/{name}/test"): notifier_test,
    ("POST", "/api/v1/jobs/{name}/snooze"): snooze,
    ("DELETE", "/api/v1/jobs/{name}/snooze"): snooze,
    ("GET", "/healthz"): public("/healthz"),
    ("GET", "/readyz"): public("/readyz"),
    ("GET", "/api/v1/healthz"): public("/api/v1/healthz"),
    ("GET", "/api/v1/readyz"): public("/api/v1/readyz"),
    ("GET", "/api/v1/openapi.json"): public("/api/v1/openapi.json"),
    ("GET", "/api/docs"): public("/api/docs"),
    ("GET", "/"): public("/"),
    ("GET", "/static/{path}"): public("/static/api-docs.js"),
}


def served_routes(world: World) -> set[tuple[str, str]]:
    """(method, path template) of every route but HEAD (a GET's twin, covered by the GET's case)."""
    found = set()
    for route in world.h.client.app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "OPTIONS") or resource is None:
            continue
        path = resource.canonical
        if "{" not in path and resource.get_info().get("prefix"):
            path = path.rstrip("/") + "/{path}"  # a static folder
        found.add((route.method, path))
    return found


async def test_every_route_has_a_case(world):
    missing = served_routes(world) - set(CASES)
    assert not missing, f"routes with no case for a token limited to jobs: {sorted(missing)}"


async def test_every_route_without_a_job_has_a_policy(world):
    """A route that names no job or run is `filtered`, `open` or `refused` on purpose, not by default."""
    for route in world.h.client.app.router.routes():
        resource = route.resource
        if resource is None or (
            getattr(route.handler, "jobd_scope", None) is None and resource.canonical != "/metrics"
        ):
            continue  # public: no token is asked for
        path = resource.canonical
        if scope_module.policy(path) not in ("job", "run"):
            assert path in scope_module.POLICIES, (route.method, path)


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda route: f"{route[0]} {route[1]}")
async def test_a_limited_token_on_each_route(world, route):
    await CASES[route](world)


async def test_the_firehose_of_a_limited_token_carries_only_its_jobs(world):
    h = world.h
    for token, query in ((LIMITED_ADMIN, ""), (None, "ticket")):
        headers = bearer(LIMITED_ADMIN) if token else {}
        path = "/api/v1/events?log=1"
        if query == "ticket":
            minted = await world.call("POST", "/api/v1/tickets", 201, token=LIMITED_ADMIN, json={"stream": path})
            path += f"&ticket={minted['ticket']}"
        response = await h.client.get(path, headers={**headers, "Accept": "text/event-stream"})
        assert response.status == 200
        reader = SSEReader(response)
        try:
            await reader.until(lambda m: m.type == "connected")
            secret = (await h.trigger("secret", headers=bearer(OPS)))["id"]
            mine = (await h.trigger("backup-db", headers=bearer(OPS)))["id"]
            await reader.until(lambda m: m.data.get("run_id") == mine and m.data.get("status") == "COMPLETED")
            await h.finished(secret)
            # Another run of its own after secret's end: anything of secret's would have come before.
            last = (await h.trigger("backup-files", headers=bearer(OPS)))["id"]
            await reader.until(lambda m: m.data.get("run_id") == last and m.data.get("status") == "COMPLETED")
        finally:
            response.close()
        jobs = {m.data.get("job") for m in reader.messages if m.type != "connected"}
        assert jobs <= MINE and "backup-db" in jobs, jobs
        assert not any(m.type == "summary" for m in reader.messages)
        assert all(m.data.get("run_id") != secret for m in reader.messages)


async def test_the_firehose_filter_of_a_limited_token_meets_its_own(world):
    """`?job=` on a limited firehose keeps the jobs of both filters: of another job alone, nothing
    (not every job). Replayed from before the runs, the opening holds whatever the stream lets
    through; the first heartbeat comes after it."""
    h = world.h
    before = h.daemon.bus.last_id
    secret = (await h.trigger("secret", headers=bearer(OPS)))["id"]
    mine = (await h.trigger("backup-db", headers=bearer(OPS)))["id"]
    await h.finished(secret)
    await h.finished(mine)
    seen = {}
    for query in ("job=secret", "job=secret,backup-db"):
        response = await h.client.get(
            f"/api/v1/events?{query}",
            headers={**bearer(LIMITED_ADMIN), "Accept": "text/event-stream", "Last-Event-ID": str(before)},
        )
        assert response.status == 200
        lines = []
        try:
            async with asyncio.timeout(10):
                while not (line := await response.content.readline()).startswith(b":"):
                    lines.append(line.decode())
        finally:
            response.close()
        seen[query] = [line for line in lines if line.startswith("data:")]
    assert len(seen["job=secret"]) == 1 and '"type":"connected"' in seen["job=secret"][0]
    both = "".join(seen["job=secret,backup-db"])
    assert f'"run_id":{mine}' in both and "secret" not in both


async def test_metrics_with_their_own_token_refuse_a_limited_one(start_daemon):
    h = await start_daemon(JOBS, auth=TOKENS, metrics={"token": "prometheus-token-1"})
    for token, status in (("prometheus-token-1", 200), (OPS, 200), (LIMITED, 403), (LIMITED_ADMIN, 403)):
        response = await h.client.get("/metrics", headers=bearer(token))
        assert response.status == status, (token, await response.text())
