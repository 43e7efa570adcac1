"""Cluster mode with real `jobd serve` processes on one PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
from typing import Any

import aiohttp
import pytest
from clusterhelp import executions, nodes, query, statuses, trigger
from conftest import wait_for

# The node's reads of the history (jobd.store.postgres.store) are built beside this backend.
pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")


@pytest.mark.timeout(240)
async def test_runs_triggered_across_three_nodes_each_execute_exactly_once(tmp_path, pg_db):
    total = 10_000
    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        ids: list[int] = []
        for i in range(total // 100):
            ids += await trigger(session, daemons[i % 3].url, "noop", 100)
        assert len(set(ids)) == total
        await wait_for(lambda: statuses(pg_db).get("COMPLETED", 0) == total, timeout=180, interval=0.5)
        done = executions(tmp_path)
        per_run = collections.Counter(run_id for run_id, _ in done)
        assert sorted(per_run) == sorted(ids)
        assert set(per_run.values()) == {1}, [r for r, n in per_run.items() if n > 1][:10]
        pids = {pid for _, pid in done}
        assert len(pids) == 3, "every node executed some runs"
        assert query(pg_db, "SELECT DISTINCT status FROM runs WHERE id = ANY(%s)", ids) == [("COMPLETED",)]


async def test_a_per_second_cron_job_on_three_nodes_fires_once_per_second(tmp_path, pg_db):
    tick = '[jobs.tick]\nhandler = "cluster_jobs:record"\nschedule = "* * * * * *"\noverlap = "allow"\n'
    async with nodes(tmp_path, pg_db, 3, tick):
        await asyncio.sleep(20)  # the cron job runs for this long; nothing is awaited
    fires = [int(at) for (at,) in query(pg_db, "SELECT scheduled_for FROM runs WHERE job = 'tick' ORDER BY 1")]
    assert len(fires) >= 15
    seconds = collections.Counter(fires)
    assert [at for at, n in seconds.items() if n > 1] == [], "duplicates"
    assert all(at % 1000 == 0 for at in fires)
    missing = sorted(set(range(fires[0], fires[-1] + 1, 1000)) - set(fires))
    assert missing == [], "misses"
    recorded = query(pg_db, "SELECT count(*), count(DISTINCT node) FROM fires WHERE job = 'tick'")
    assert recorded[0][0] == len(fires)
    assert recorded[0][1] >= 2, "fires were made by more than one node"


async def read_until(reader: Any, wanted: set[int], timeout: float) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen:
        message = await reader.next(timeout=max(0.1, deadline - time.monotonic()))
        assert message is not None
        data = message.data
        if data["type"] == "status_update" and data["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            seen.add(data["run_id"])
    return seen


async def test_an_event_stream_on_one_node_shows_runs_executed_on_the_others(tmp_path, pg_db):
    from ssehelp import SSEReader

    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        a, b, c = daemons
        async with session.get(f"{a.url}/api/v1/events") as response:
            assert response.status == 200
            reader = SSEReader(response)
            ids = await trigger(session, b.url, "noop", 200) + await trigger(session, c.url, "noop", 200)
            seen = await read_until(reader, set(ids), timeout=60)
        assert set(ids) <= seen
        assert a.proc is not None
        elsewhere = [run_id for run_id, pid in executions(tmp_path) if pid != a.proc.pid]
        assert elsewhere, "some runs were executed on B or C"
        assert set(elsewhere) <= seen


async def test_a_cancel_sent_to_one_node_stops_a_run_executing_on_another(tmp_path, pg_db):
    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        [run_id] = await trigger(session, daemons[1].url, "sleepy", 1, {"seconds": 60})
        await wait_for(lambda: query(pg_db, "SELECT status FROM runs WHERE id = %s", run_id)[0][0] == "PROCESSING")
        [(owner,)] = query(pg_db, "SELECT node FROM runs WHERE id = %s", run_id)
        other = next(d for i, d in enumerate(daemons) if f"node{i}" != owner)
        started = time.monotonic()
        async with session.post(f"{other.url}/api/v1/runs/{run_id}/cancel", json={}) as resp:
            assert resp.status in (200, 202), await resp.text()
        await wait_for(
            lambda: query(pg_db, "SELECT status FROM runs WHERE id = %s", run_id)[0][0] == "CANCELLED", timeout=2
        )
        assert time.monotonic() - started <= 2.0


async def test_the_runs_of_a_killed_node_are_taken_over_after_dead_after_s(tmp_path, pg_db):
    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        ids = await trigger(session, daemons[0].url, "sleepy", 6, {"seconds": 60})
        processing = "SELECT count(*) FROM runs WHERE status = 'PROCESSING' AND id = ANY(%s)"
        await wait_for(lambda: query(pg_db, processing, ids)[0][0] == 6)
        victim_index = int(
            query(pg_db, "SELECT node FROM runs WHERE status = 'PROCESSING' AND id = ANY(%s) LIMIT 1", ids)[0][0][4:]
        )
        victim = daemons[victim_index]
        assert victim.proc is not None
        victim_pid = victim.proc.pid
        owned = {
            rid
            for (rid,) in query(
                pg_db,
                "SELECT id FROM runs WHERE node = %s AND status = 'PROCESSING' AND id = ANY(%s)",
                f"node{victim_index}",
                ids,
            )
        }
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)

        def taken_over() -> bool:
            rows = query(
                pg_db, "SELECT retry_of FROM runs WHERE retry_of = ANY(%s) AND status = 'PROCESSING'", list(owned)
            )
            return {r for (r,) in rows} == owned

        try:
            await wait_for(taken_over, timeout=3 + 5 + 2, interval=0.2)
        except AssertionError:
            rows = query(pg_db, "SELECT id, status, node, retry_of, error FROM runs ORDER BY id")
            nodes_now = query(pg_db, "SELECT name, heartbeat_at, dead_at FROM nodes")
            raise AssertionError(f"not taken over: {rows} {nodes_now} owned={owned}") from None
        took = time.monotonic() - killed_at
        ended = query(pg_db, "SELECT status, error FROM runs WHERE id = ANY(%s)", list(owned))
        assert {status for status, _ in ended} == {"FAILED"}
        assert all("interrupted" in error for _, error in ended)
        retries = {rid for (rid,) in query(pg_db, "SELECT id FROM runs WHERE retry_of = ANY(%s)", list(owned))}
        await wait_for(lambda: retries <= {r for r, _ in executions(tmp_path)})
        ran = {run_id: pid for run_id, pid in executions(tmp_path)}
        assert all(ran[r] != victim_pid for r in retries)
        assert took <= 3 + 5
        assert set(ids) >= owned
        print(json.dumps({"failover_s": round(took, 2)}))


async def test_a_paused_node_whose_runs_were_taken_over_writes_no_final_state_for_them(tmp_path, pg_db):
    async with nodes(tmp_path, pg_db, 2) as daemons, aiohttp.ClientSession() as session:
        ids = await trigger(session, daemons[0].url, "sleepy", 4, {"seconds": 4})
        processing = "SELECT count(*) FROM runs WHERE status = 'PROCESSING' AND id = ANY(%s)"
        await wait_for(lambda: query(pg_db, processing, ids)[0][0] == 4)
        [(victim_name,)] = query(pg_db, "SELECT node FROM runs WHERE id = %s", ids[0])
        victim = daemons[int(victim_name[4:])]
        owned = [
            rid for (rid,) in query(pg_db, "SELECT id FROM runs WHERE node = %s AND id = ANY(%s)", victim_name, ids)
        ]
        victim.signal(signal.SIGSTOP)
        try:
            ended = "SELECT count(*) FROM runs WHERE status = 'FAILED' AND id = ANY(%s)"
            await wait_for(lambda: query(pg_db, ended, owned)[0][0] == len(owned), timeout=10, interval=0.2)
        finally:
            victim.signal(signal.SIGCONT)
        # Awake again, it finds itself declared dead: it stops its runs and its late writes change nothing.
        await wait_for(lambda: len(victim.events("finish_fenced")) >= len(owned), timeout=15)
        assert victim.events("node_fenced")
        rows = query(pg_db, "SELECT status, error FROM runs WHERE id = ANY(%s)", owned)
        assert [status for status, _ in rows] == ["FAILED"] * len(owned)
        assert all(error.startswith("interrupted: its node stopped answering") for _, error in rows)
