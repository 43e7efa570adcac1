"""Operating a cluster of real `jobd serve` processes on one PostgreSQL: `jobd status` listing the
nodes, any node answering for any run's log, and alerts sent once for the cluster's failure streak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import wait_for
from test_cluster_processes import nodes, query

pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")

JOBS = (
    '[jobs.talk]\nhandler = "ops_jobs:talk"\nmax_concurrency = 1\noverlap = "allow"\n'
    '[jobs.fail]\nhandler = "ops_jobs:fail"\nmax_concurrency = 8\noverlap = "allow"\nalert_after_failures = 3\n'
)


async def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBD_URL": url}
    env.pop("JOBD_TOKEN", None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jobd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


async def test_status_lists_the_nodes_of_the_cluster(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, JOBS) as daemons:
        shown = await cli(daemons[1].url, "status")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("workers 0/16 busy")
        assert lines[1].split() == ["NODE", "HOST", "PID", "ALIVE", "RUNNING", "HEARTBEAT"]
        rows = [line.split() for line in lines[2:4]]
        pids = {d.proc.pid for d in daemons if d.proc is not None}
        assert [row[0] for row in rows] == ["node0", "node1"]
        assert {int(row[2]) for row in rows} == pids
        assert [row[3:5] for row in rows] == [["yes", "0"], ["yes", "0"]]
        assert all(row[6] == "ago" and float(row[5][:-1]) < 3 for row in rows)
        assert lines[4] == "" and lines[5].split()[0] == "JOB"
        snapshot = json.loads((await cli(daemons[0].url, "status", "--json")).stdout)
        assert set(snapshot) == {"queue", "jobs", "nodes"}
        listed = {n["name"]: n for n in snapshot["nodes"]}
        assert listed.keys() == {"node0", "node1"} and all(n["alive"] for n in listed.values())
        assert listed["node1"]["url"] == daemons[1].url


AUTH = '[auth]\ntokens = [{ name = "ops", token = "ops-token-123", scope = "admin" }]\n'
HEADERS = {"Authorization": "Bearer ops-token-123"}


async def run_on(dsn: str, run_id: int) -> str | None:
    rows = query(dsn, "SELECT node FROM runs WHERE id = %s", run_id)
    return rows[0][0] if rows else None


async def stream_messages(session: aiohttp.ClientSession, url: str, **headers: str) -> list[dict[str, Any]]:
    """Every message of a stream until it ends."""
    messages = []
    async with session.get(url, headers={**HEADERS, **headers}) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: "):
                messages.append(json.loads(line[6:]))
    return messages


async def test_any_node_answers_for_the_log_of_a_run_executed_on_another(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, AUTH + JOBS) as daemons, aiohttp.ClientSession() as session:
        by_name = {f"node{i}": d for i, d in enumerate(daemons)}
        # Three runs that wait for their job's one slot behind a first one: their streams open while
        # they are PENDING, on both nodes, so that one of each pair follows a run executed elsewhere
        # and moves there when it starts, losing no line.
        body = {"runs": [{"params": {"lines": 5, "pause": 0.2}} for _ in range(4)]}
        async with session.post(f"{daemons[0].url}/api/v1/jobs/talk/trigger", json=body, headers=HEADERS) as resp:
            assert resp.status == 202, await resp.text()
            ids = [run["id"] for run in (await resp.json())["runs"]]
        waiting = ids[1:]
        streams = [
            stream_messages(session, f"{d.url}/api/v1/runs/{run_id}/events?log=1")
            for run_id in waiting
            for d in daemons
        ]
        got = await asyncio.gather(*streams)
        executed = {run_id: await run_on(pg_db, run_id) for run_id in ids}
        for (run_id, daemon), messages in zip([(r, d) for r in waiting for d in daemons], got):
            lines = [m["line"] for m in messages if m["type"] == "log"]
            every = [f"line {n} of run {run_id}" for n in range(5)]
            assert lines == every, (daemon is by_name[executed[run_id]], messages)
            assert messages[-1]["type"] == "status_update" and messages[-1]["status"] == "COMPLETED"
        # The whole log, from either node.
        for run_id, owner in executed.items():
            assert owner is not None
            for daemon in daemons:
                async with session.get(f"{daemon.url}/api/v1/runs/{run_id}/log", headers=HEADERS) as resp:
                    assert resp.status == 200
                    text = await resp.text()
                assert text.splitlines() == [f"line {n} of run {run_id}" for n in range(5)]
        # Without a token the relaying node refuses, as the executing one would.
        elsewhere = next(d for name, d in by_name.items() if name != executed[ids[0]])
        async with session.get(f"{elsewhere.url}/api/v1/runs/{ids[0]}/log") as resp:
            assert resp.status == 401
        # A node that stops answering: a 502 naming it, within the relay's time limits.
        owner_name = executed[ids[0]]
        other = next(d for name, d in by_name.items() if name != owner_name)
        by_name[owner_name].signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            async with session.get(f"{other.url}/api/v1/runs/{ids[0]}/log", headers=HEADERS) as resp:
                problem = await resp.json()
            assert resp.status in (502, 503) and owner_name in problem["detail"], problem
            assert time.monotonic() - started < 15
            # Declared dead: a 503 at once.
            await wait_for(
                lambda: query(pg_db, "SELECT dead_at FROM nodes WHERE name = %s", owner_name)[0][0] is not None
            )
            async with session.get(f"{other.url}/api/v1/runs/{ids[0]}/log", headers=HEADERS) as resp:
                problem = await resp.json()
            assert resp.status == 503 and f"node {owner_name!r}, which is not alive" in problem["detail"], problem
        finally:
            by_name[owner_name].signal(signal.SIGCONT)


async def test_a_stream_opened_on_another_node_while_the_run_runs_is_relayed(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, AUTH + JOBS) as daemons, aiohttp.ClientSession() as session:
        async with session.post(
            f"{daemons[0].url}/api/v1/jobs/talk/trigger", json={"params": {"lines": 30, "pause": 0.1}}, headers=HEADERS
        ) as resp:
            run_id = (await resp.json())["run"]["id"]
        await wait_for(lambda: query(pg_db, "SELECT status FROM runs WHERE id = %s", run_id)[0][0] == "PROCESSING")
        owner = await run_on(pg_db, run_id)
        other = next(d for i, d in enumerate(daemons) if f"node{i}" != owner)
        executing = next(d for d in daemons if d is not other)
        # A ticket minted on one node holds on the other (the cluster's key), and on the relayed request.
        stream = f"/api/v1/runs/{run_id}/events"
        async with session.post(f"{executing.url}/api/v1/tickets", json={"stream": stream}, headers=HEADERS) as resp:
            assert resp.status == 201, await resp.text()
            ticket = (await resp.json())["ticket"]
        messages = []
        async with session.get(f"{other.url}{stream}", params={"log": "1", "ticket": ticket}) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.startswith(b"data: "):
                    messages.append(json.loads(line[6:]))
        assert messages[0]["type"] == "connected"
        lines = [m["line"] for m in messages if m["type"] == "log"]
        first = int(lines[0].split()[1])
        assert lines == [f"line {n} of run {run_id}" for n in range(first, 30)] and first < 29
        assert messages[-1]["status"] == "COMPLETED"


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An [alerts] table whose webhook is a server of the test's, and what that server received."""
    received: list[dict[str, Any]] = []

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append(await request.json())
        return aiohttp.web.Response(status=204)

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f'[alerts]\nwebhook_url = "http://127.0.0.1:{port}/hook"\nwebhook_retries = 0\n', received
    finally:
        await runner.cleanup()


async def test_a_failure_streak_is_the_clusters_and_alerts_once(tmp_path: Path, pg_db: str) -> None:
    jobs = JOBS.replace("max_concurrency = 8", "max_concurrency = 1")
    async with webhook() as (alerts, received):
        async with nodes(tmp_path, pg_db, 2, alerts + jobs) as daemons, aiohttp.ClientSession() as session:
            failed: list[int] = []
            for attempt in range(8):  # until both nodes have executed failures of the streak
                node = daemons[attempt % 2]
                body = {"runs": [{} for _ in range(3)]}
                async with session.post(f"{node.url}/api/v1/jobs/fail/trigger", json=body) as resp:
                    failed += [run["id"] for run in (await resp.json())["runs"]]
                ended = "SELECT count(*) FROM runs WHERE status = 'FAILED' AND id = ANY(%s)"
                await wait_for(lambda: query(pg_db, ended, failed)[0][0] == len(failed))
                if len({row[0] for row in query(pg_db, "SELECT node FROM runs WHERE id = ANY(%s)", failed)}) == 2:
                    break
            else:
                pytest.fail("every failure ran on one node")
            streak = query(pg_db, "SELECT consecutive_failures FROM job_state WHERE job = 'fail'")[0][0]
            assert streak == len(failed)
            await wait_for(lambda: len(received) >= 1)
            third = sorted(failed)[2]
            assert [(a["kind"], a["run_id"], a["consecutive_failures"]) for a in received] == [("failure", third, 3)]
            senders = [d for d in daemons if any(e["run_id"] == third for e in d.events("job_alert"))]
            assert len(senders) == 1
            assert not [e for d in daemons for e in d.events("job_alert") if e["run_id"] != third]


async def test_the_firehose_with_log_lines_has_those_of_every_node(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, AUTH + JOBS) as daemons, aiohttp.ClientSession() as session:
        lines: list[str] = []
        ended: set[int] = set()
        ids: list[int] = []

        async def follow() -> None:
            async with session.get(f"{daemons[0].url}/api/v1/events?log=1&job=talk", headers=HEADERS) as resp:
                assert resp.status == 200
                async for raw in resp.content:
                    if not raw.startswith(b"data: "):
                        continue
                    message = json.loads(raw[6:])
                    if message["type"] == "log":
                        lines.append(message["line"])
                    elif message["type"] == "status_update" and message["status"] == "COMPLETED":
                        ended.add(message["run_id"])

        follower = asyncio.create_task(follow())
        try:
            await asyncio.sleep(1.5)  # the other node's firehose is joined within a heartbeat
            body = {"runs": [{"params": {"lines": 3, "pause": 0.2}} for _ in range(4)]}
            for _ in range(5):  # until both nodes have executed some (they take turns at the job's one slot)
                async with session.post(
                    f"{daemons[1].url}/api/v1/jobs/talk/trigger", json=body, headers=HEADERS
                ) as resp:
                    ids += [run["id"] for run in (await resp.json())["runs"]]
                await wait_for(lambda: ended >= set(ids), timeout=30)
                if {await run_on(pg_db, run_id) for run_id in ids} == {"node0", "node1"}:
                    break
            else:
                pytest.fail("every run ran on one node")
            expected = {f"line {n} of run {run_id}" for run_id in ids for n in range(3)}
            await wait_for(lambda: expected <= set(lines), timeout=10)
            assert len(lines) == len(expected)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower


async def test_a_run_failed_by_taking_over_a_dead_node_alerts_from_the_node_that_took_it(
    tmp_path: Path, pg_db: str
) -> None:
    hang = '[jobs.hang]\nhandler = "ops_jobs:hang"\non_interrupt = "fail"\nalert_after_failures = 1\n'
    async with webhook() as (alerts, received), nodes(tmp_path, pg_db, 2, alerts + JOBS + hang) as daemons:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{daemons[0].url}/api/v1/jobs/hang/trigger", json={}) as resp:
                run_id = (await resp.json())["run"]["id"]
        running = "SELECT node FROM runs WHERE id = %s AND status = 'PROCESSING'"
        owner = await wait_for(lambda: (query(pg_db, running, run_id) or [(None,)])[0][0])
        victim, survivor = (daemons[0], daemons[1]) if owner == "node0" else (daemons[1], daemons[0])
        await victim.kill()
        await wait_for(lambda: len(received) >= 1, timeout=20)
        assert [(a["kind"], a["run_id"], a["consecutive_failures"]) for a in received] == [("failure", run_id, 1)]
        assert received[0]["error"].startswith("interrupted: its node stopped answering")
        assert [e["run_id"] for e in survivor.events("job_alert")] == [run_id]


async def test_a_short_runs_lines_reach_a_stream_on_the_other_node(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, AUTH + JOBS) as daemons, aiohttp.ClientSession() as session:
        # Quick runs behind a slower one at the job's one slot: their streams open while they wait,
        # and each may start and end on a node before the other node's feed tells of its start.
        body = {"runs": [{"params": {"lines": 1, "pause": 1.0}}] + [{"params": {"lines": 3}} for _ in range(6)]}
        async with session.post(f"{daemons[0].url}/api/v1/jobs/talk/trigger", json=body, headers=HEADERS) as resp:
            ids = [run["id"] for run in (await resp.json())["runs"]][1:]
        got = await asyncio.gather(
            *(stream_messages(session, f"{d.url}/api/v1/runs/{run_id}/events?log=1") for run_id in ids for d in daemons)
        )
        for (run_id, daemon), messages in zip([(r, d) for r in ids for d in daemons], got):
            lines = [m["line"] for m in messages if m["type"] == "log"]
            assert lines == [f"line {n} of run {run_id}" for n in range(3)], (daemon.url, messages)
            assert messages[-1]["type"] == "status_update" and messages[-1]["status"] == "COMPLETED", (
                daemon.url,
                messages,
            )


async def test_a_relayed_stream_whose_node_dies_ends_with_an_error_naming_it(tmp_path: Path, pg_db: str) -> None:
    hang = '[jobs.hang]\nhandler = "ops_jobs:hang"\non_interrupt = "fail"\n'
    async with nodes(tmp_path, pg_db, 2, AUTH + JOBS + hang) as daemons, aiohttp.ClientSession() as session:
        async with session.post(f"{daemons[0].url}/api/v1/jobs/hang/trigger", json={}, headers=HEADERS) as resp:
            run_id = (await resp.json())["run"]["id"]
        running = "SELECT node FROM runs WHERE id = %s AND status = 'PROCESSING'"
        owner = await wait_for(lambda: (query(pg_db, running, run_id) or [(None,)])[0][0])
        victim, other = (daemons[0], daemons[1]) if owner == "node0" else (daemons[1], daemons[0])
        messages: list[dict[str, Any]] = []
        async with session.get(f"{other.url}/api/v1/runs/{run_id}/events?log=1", headers=HEADERS) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    messages.append(json.loads(line[6:]))
                    if messages[-1]["type"] == "status_update":
                        await victim.kill()
        assert messages[-1]["type"] == "error" and messages[-1]["reason"] == "node_unreachable", messages
        assert f"node {owner!r}" in messages[-1]["message"]
        # Reconnected once the run was taken over: its final state.
        await wait_for(lambda: query(pg_db, "SELECT status FROM runs WHERE id = %s", run_id)[0][0] == "FAILED")
        final = await stream_messages(session, f"{other.url}/api/v1/runs/{run_id}/events?log=1")
        assert final[-1]["status"] == "FAILED"
