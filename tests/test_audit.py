"""The audit log: a record of every state-changing API call (refusals included), its filters and
pages, admin only, kept across a restart, and deleted by retention like the runs."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from conftest import BACKENDS, wait_for

from jobd.app import Daemon
from jobd.models import DAY_MS
from jobd.store.audit import AuditRecord
from jobd.web import create_app
from jobd.web.audit import AUDITED
from jobd.web.keys import DAEMON

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

OPS, CI, VIEWER, BACKUPS = "ops-token-123", "ci-token-1234", "viewer-token-123", "backups-token-123"
TOKENS = {
    "tokens": [
        {"name": "ops", "token": OPS, "scope": "admin"},
        {"name": "ci", "token": CI, "scope": "trigger"},
        {"name": "viewer", "token": VIEWER, "scope": "read"},
        {"name": "backups", "token": BACKUPS, "scope": "admin", "jobs": ["backup-*"]},
    ]
}
JOBS = {
    "noop": {"handler": "sample_jobs:noop", "overlap": "allow"},
    "backup-db": {"handler": "sample_jobs:noop", "overlap": "allow"},
    "hourly": {"handler": "sample_jobs:noop", "schedule": "0 * * * *"},
}
SPAN = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T03:00:00Z", "dry_run": True}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(h: Any, method: str, path: str, expect: int, token: str | None = CI, **kwargs: Any) -> Any:
    response = await h.client.request(method, path, headers=bearer(token) if token else {}, **kwargs)
    body = await response.json()
    assert response.status == expect, body
    return body


async def audit(h: Any, query: str = "", token: str | None = OPS) -> list[dict[str, Any]]:
    return (await call(h, "GET", f"/api/v1/audit{query}", 200, token=token))["records"]  # type: ignore[no-any-return]


def subset(record: dict[str, Any], **expected: Any) -> bool:
    return all(record[key] == value for key, value in expected.items())


@pytest.fixture
async def h(start_daemon):
    return await start_daemon(JOBS, auth=TOKENS)


async def test_every_action_is_recorded_with_who_where_and_how_it_ended(h):
    run = (await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={}))["run"]
    await h.finished(run["id"])
    await call(h, "POST", "/api/v1/jobs/nope/trigger", 404, json={})
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 400, data=b"{oops")
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 403, token=VIEWER, json={})
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 401, token=None, json={})  # not recorded
    await call(h, "POST", "/api/v1/jobs/hourly/backfill", 200, json=SPAN)
    await call(h, "POST", "/api/v1/jobs/noop/backfill", 409, json=SPAN)
    await call(h, "POST", "/api/v1/jobs/noop/pause", 200, token=OPS)
    await call(h, "POST", "/api/v1/jobs/noop/resume", 200, token=OPS)
    await call(h, "POST", "/api/v1/jobs/noop/snooze", 200, token=OPS, json={"until": "2030-01-01T00:00:00Z"})
    await call(h, "DELETE", "/api/v1/jobs/noop/snooze", 200, token=OPS)
    waiting = (await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={"delay_s": 3600}))["run"]
    await call(h, "POST", f"/api/v1/runs/{waiting['id']}/retry", 409)
    await call(h, "POST", f"/api/v1/runs/{waiting['id']}/cancel", 200)
    await call(h, "POST", f"/api/v1/runs/{waiting['id']}/cancel", 409)
    again = (await call(h, "POST", f"/api/v1/runs/{run['id']}/retry", 202))["run"]
    await h.finished(again["id"])
    await call(h, "POST", "/api/v1/runs/999999/cancel", 404)
    stream = f"/api/v1/runs/{run['id']}/events"
    await call(h, "POST", "/api/v1/tickets", 201, json={"stream": stream})
    await call(h, "POST", "/api/v1/tickets", 403, json={"stream": "/api/v1/events"})

    records = list(reversed(await audit(h, "?limit=500")))
    assert all(r["remote"] == "127.0.0.1" and r["request_id"] for r in records)
    expected = [
        dict(action="trigger", token="ci", job="noop", status=202, outcome="ok", detail=f"run {run['id']}"),
        dict(action="trigger", token="ci", job="nope", status=404, outcome="job-not-found"),
        dict(action="trigger", token="ci", job="noop", status=400, outcome="bad-request"),
        dict(action="trigger", token="viewer", job="noop", status=403, outcome="forbidden"),
        dict(action="backfill", token="ci", job="hourly", status=200, outcome="ok"),
        dict(action="backfill", token="ci", job="noop", status=409, outcome="conflict"),
        dict(action="pause", token="ops", job="noop", status=200, target="/api/v1/jobs/noop/pause"),
        dict(action="resume", token="ops", job="noop", status=200),
        dict(action="snooze", token="ops", job="noop", status=200, target="/api/v1/jobs/noop/snooze"),
        dict(action="unsnooze", token="ops", job="noop", status=200),
        dict(action="trigger", token="ci", job="noop", status=202, detail=f"run {waiting['id']}"),
        dict(action="retry", job="noop", run_id=waiting["id"], status=409, outcome="conflict"),
        dict(action="cancel", job="noop", run_id=waiting["id"], status=200, outcome="ok"),
        dict(action="cancel", job="noop", run_id=waiting["id"], status=409, outcome="conflict"),
        dict(action="retry", job="noop", run_id=run["id"], status=202, detail=f"run {again['id']}"),
        dict(action="cancel", job=None, run_id=999999, status=404, outcome="run-not-found"),
        dict(action="ticket", job="noop", run_id=run["id"], status=201, target=stream),
        dict(action="ticket", token="ci", status=403, target="/api/v1/tickets", outcome="forbidden"),
    ]
    assert len(records) == len(expected), records
    for record, wanted in zip(records, expected, strict=True):
        assert subset(record, **wanted), (record, wanted)
    assert "no job named 'nope'" in records[1]["detail"]
    assert {r["action"] for r in records} == set(AUDITED.values())


async def test_filters_and_pages(h):
    for _ in range(3):
        await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={})
    await call(h, "POST", "/api/v1/jobs/backup-db/trigger", 202, token=OPS, json={})
    await call(h, "POST", "/api/v1/jobs/noop/pause", 200, token=OPS)
    everything = await audit(h)
    assert [r["id"] for r in everything] == sorted((r["id"] for r in everything), reverse=True)
    assert len(everything) == 5
    assert {r["token"] for r in await audit(h, "?token=ops")} == {"ops"}
    assert len(await audit(h, "?token=ops")) == 2
    assert {r["action"] for r in await audit(h, "?action=pause,cancel")} == {"pause"}
    assert {r["job"] for r in await audit(h, "?job=backup-db")} == {"backup-db"}
    assert await audit(h, "?since=2999-01-01T00:00:00Z") == []
    assert len(await audit(h, "?since=2020-01-01T00:00:00Z&until=2999-01-01T00:00:00Z")) == 5
    await call(h, "GET", "/api/v1/audit?action=launch", 400, token=OPS)
    await call(h, "GET", "/api/v1/audit?since=yesterday", 400, token=OPS)
    paged, cursor = [], ""
    while True:
        page = await call(h, "GET", f"/api/v1/audit?limit=2&action=trigger{cursor}", 200, token=OPS)
        assert page["pagination"]["total"] == 4
        paged += page["records"]
        if not page["pagination"]["has_more"]:
            break
        cursor = f"&cursor={page['pagination']['next_cursor']}"
    assert [r["id"] for r in paged] == [r["id"] for r in everything if r["action"] == "trigger"]


async def test_only_admin_tokens_read_it_and_a_limited_one_its_jobs(h):
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={})
    await call(h, "POST", "/api/v1/jobs/backup-db/trigger", 202, json={})
    await call(h, "GET", "/api/v1/audit", 403, token=CI)
    await call(h, "GET", "/api/v1/audit", 403, token=VIEWER)
    await call(h, "GET", "/api/v1/audit", 401, token=None)
    assert [r["job"] for r in await audit(h, token=BACKUPS)] == ["backup-db"]
    assert await audit(h, "?job=noop", token=BACKUPS) == []
    await wait_for(lambda: not h.daemon.runs.active)


async def test_with_auth_off_records_have_no_token(start_daemon):
    h = await start_daemon(JOBS)
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, token=None, json={})
    [record] = await audit(h, token=None)
    assert record["token"] is None and record["action"] == "trigger" and record["remote"] == "127.0.0.1"
    await wait_for(lambda: not h.daemon.runs.active)


async def test_records_are_kept_across_a_restart(aiohttp_client, make_config):
    config = make_config(JOBS, auth=TOKENS)
    client = await aiohttp_client(create_app(Daemon(config, environ={})))
    for job in ("noop", "backup-db"):
        response = await client.post(f"/api/v1/jobs/{job}/trigger", json={}, headers=bearer(CI))
        assert response.status == 202
    await client.close()  # the daemon stops: what was pending is committed
    client = await aiohttp_client(create_app(Daemon(config, environ={})))
    response = await client.get("/api/v1/audit", headers=bearer(OPS))
    records = (await response.json())["records"]
    assert [(r["action"], r["job"]) for r in records] == [("trigger", "backup-db"), ("trigger", "noop")]
    daemon = client.app[DAEMON]
    await wait_for(lambda: not daemon.runs.active)


async def test_retention_deletes_old_records_like_runs(start_daemon):
    h = await start_daemon(JOBS, auth=TOKENS, retention={"audit_days": 7, "first_delay_s": 3600, "batch_size": 2})
    now = h.daemon.runs.clock()
    for days in (30, 10, 8):
        h.daemon.audit.record(
            AuditRecord(
                at=now - days * DAY_MS,
                token="ops",
                remote="10.0.0.1",
                action="pause",
                target="/x",
                status=200,
                outcome="ok",
            )
        )
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={})
    assert len(await audit(h)) == 4
    result = await h.daemon.retention.sweep()
    assert result.audit == 3
    [kept] = await audit(h)
    assert kept["action"] == "trigger"
    await wait_for(lambda: not h.daemon.runs.active)


async def test_audit_days_zero_keeps_every_record(start_daemon):
    h = await start_daemon(JOBS, auth=TOKENS, retention={"audit_days": 0, "first_delay_s": 3600})
    h.daemon.audit.record(
        AuditRecord(at=1_000, token=None, remote=None, action="pause", target="/x", status=200, outcome="ok")
    )
    assert (await h.daemon.retention.sweep()).audit == 0
    assert len(await audit(h)) == 1


async def test_cli_audit(h):
    await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={})
    await call(h, "POST", "/api/v1/jobs/noop/pause", 200, token=OPS)
    url = str(h.client.make_url("")).rstrip("/")

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobd", "audit", *args, "--url", url, "--token", OPS,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli()
    assert (code, err) == (0, "")
    header, pause, trigger = out.splitlines()
    assert header.split() == ["AT", "TOKEN", "REMOTE", "ACTION", "JOB", "RUN", "STATUS", "OUTCOME", "DETAIL"]
    assert pause.split()[1:8] == ["ops", "127.0.0.1", "pause", "noop", "-", "200", "ok"]
    assert trigger.split()[1:8] == ["ci", "127.0.0.1", "trigger", "noop", "-", "202", "ok"]
    code, out, _ = await cli("--by", "ci", "--action", "trigger", "--since", "2020-01-01", "--json")
    assert code == 0
    [record] = json.loads(out)["records"]
    assert record["token"] == "ci" and record["detail"].startswith("run ")
    code, _, err = await cli("--action", "launch")
    assert code != 0 and "action must be one or more of" in err
    await wait_for(lambda: not h.daemon.runs.active)


async def test_copy_store_moves_the_audit_log(backend, tmp_path, request):
    if backend != "postgresql":
        pytest.skip("copy-store fills a PostgreSQL store")
    from jobd.cli.copy_store import copy_store, open_source
    from jobd.store import SQLiteStore
    from jobd.store.postgres import connect_sync

    target = request.getfixturevalue("pg_db")
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    for n in range(3):
        store.append_audit(
            AuditRecord(at=1_000 + n, token="ci", remote="10.0.0.1", action="trigger", target="/t", status=202, outcome="ok", job="noop", detail=f"run {n}")
        )  # fmt: skip
    await store.flush_audit()
    await store.close()
    with connect_sync(target) as pg:
        copy_store(open_source(tmp_path / "jobd.db"), pg)
        rows = pg.execute("SELECT at, token, remote, action, job, detail FROM audit ORDER BY id").fetchall()
    assert rows == [(1_000 + n, "ci", "10.0.0.1", "trigger", "noop", f"run {n}") for n in range(3)]


async def test_copy_store_moves_notifications_and_snoozes(backend, tmp_path, request):
    if backend != "postgresql":
        pytest.skip("copy-store fills a PostgreSQL store")
    from jobd.cli.copy_store import copy_store, open_source
    from jobd.store import SQLiteStore
    from jobd.store.notifications import NewNotification, insert_statement
    from jobd.store.postgres import connect_sync

    target = request.getfixturevalue("pg_db")
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    made = [NewNotification("noop", "failure", "chat", 7, {"text": f"n{n}"}, 2_000 + n) for n in range(2)]
    sql, args, _ = insert_statement(made)
    await store.write_with(lambda conn: conn.executemany(sql, args))
    await store.write_with(
        lambda conn: conn.execute("INSERT INTO job_state (job, snoozed_until) VALUES ('noop', 9000000)")
    )
    await store.close()
    with connect_sync(target) as pg:
        copy_store(open_source(tmp_path / "jobd.db"), pg)
        rows = pg.execute("SELECT id, job, notifier, run_id, status FROM notifications ORDER BY id").fetchall()
        snoozed = pg.execute("SELECT snoozed_until FROM job_state WHERE job = 'noop'").fetchone()
        next_id = pg.execute("SELECT nextval(pg_get_serial_sequence('notifications', 'id'))").fetchone()
    assert rows == [(1, "noop", "chat", 7, "pending"), (2, "noop", "chat", 7, "pending")]
    assert snoozed == (9_000_000,) and next_id == (3,)  # the cluster's next notification follows


async def test_a_nul_in_a_path_is_recorded_without_holding_up_the_store(h):
    await call(h, "POST", "/api/v1/jobs/a%00b/trigger", 404, json={})
    run = (await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={}))["run"]
    await h.finished(run["id"])  # the commits that carried the record went through
    refused, made = reversed(await audit(h))
    assert refused["job"] == "a\ufffdb" and refused["target"] == "/api/v1/jobs/a\ufffdb/trigger"
    assert made["detail"] == f"run {run['id']}"
    await call(h, "GET", "/api/v1/audit?job=a%00b", 400, token=OPS)


async def test_bytes_that_are_not_utf8_in_a_path_are_recorded(h):
    server = h.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/v1/jobs/x%FF%ED%A0%80y/trigger HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + CI.encode() + b"\r\nContent-Length: 0\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    run = (await call(h, "POST", "/api/v1/jobs/noop/trigger", 202, json={}))["run"]
    await h.finished(run["id"])
    refused, made = reversed(await audit(h))
    assert refused["status"] == 404 and refused["job"].startswith("x") and made["detail"] == f"run {run['id']}"
