"""Cluster mode under faults, with real `jobd serve` processes on one PostgreSQL: the database
stopped under load, and nodes SIGKILLed at random moments while per-second cron jobs fire."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
import pytest
from clusterhelp import TERMINAL, executions, nodes, query, trigger, unfinished
from conftest import wait_for
from process import DaemonProcess

pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")

OUTAGE_S = 10.0
CRON_S = 120.0
# Three per-second jobs: two that always fire a run, one whose run lasts past the next second, so
# that under overlap = "skip" every other fire is a recorded skip.
TICKS = (
    "".join(
        f'[jobs.tick{i}]\nhandler = "cluster_jobs:record"\nschedule = "* * * * * *"\noverlap = "allow"\nmax_concurrency = 4\n'
        for i in (0, 1)
    )
    + '[jobs.tick2]\nhandler = "cluster_jobs:record_then_pause"\nschedule = "* * * * * *"\noverlap = "skip"\n'
)
# Where in a second a node is killed: well inside it, just before its end (a fire about to be
# made), just after it began (a fire being made).
MOMENTS = {"mid-second": (0.3, 0.7), "just before": (0.95, 0.999), "just after": (0.0, 0.03)}


@dataclass
class Load:
    """What the triggering clients were told: a 202 acknowledges its runs."""

    acknowledged: list[int] = field(default_factory=list)
    refused: int = 0  # 503 with Retry-After
    unanswered: int = 0  # no answer in time, or the connection failed: the runs may or may not exist
    unexpected: list[str] = field(default_factory=list)


async def keep_triggering(session: aiohttp.ClientSession, daemons: Sequence[DaemonProcess], load: Load) -> None:
    """Batches of no-op runs, and now and then a run lasting a second, sent round the nodes until
    cancelled (about 20 requests a second: the load of the scenario)."""
    timeout = aiohttp.ClientTimeout(total=3)
    for i in range(10**9):
        job, body = ("sleepy", {"runs": [{"params": {"seconds": 1}}]}) if i % 5 == 0 else ("noop", {"runs": [{}] * 10})
        url = f"{daemons[i % len(daemons)].url}/api/v1/jobs/{job}/trigger"
        try:
            async with session.post(url, json=body, timeout=timeout) as resp:
                if resp.status == 202:
                    load.acknowledged += [run["id"] for run in (await resp.json())["runs"]]
                elif resp.status == 503 and resp.headers.get("Retry-After"):
                    load.refused += 1
                else:
                    load.unexpected.append(f"{resp.status} {await resp.text()}")
        except (TimeoutError, aiohttp.ClientError):
            load.unanswered += 1
        await asyncio.sleep(0.05)


async def readiness(session: aiohttp.ClientSession, daemons: Sequence[DaemonProcess]) -> list[int | None]:
    async def one(daemon: DaemonProcess) -> int | None:
        try:
            async with session.get(f"{daemon.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status
        except (TimeoutError, aiohttp.ClientError):
            return None

    return list(await asyncio.gather(*(one(d) for d in daemons)))


def tracebacks(daemons: Sequence[DaemonProcess]) -> list[dict[str, Any]]:
    return [line for d in daemons for line in d.lines if "exception" in line or line.get("event") == "raw"]


@pytest.mark.timeout(240)
async def test_postgresql_stopped_for_ten_seconds_under_load_loses_nothing_acknowledged(
    tmp_path, pg_db, pg_restartable
):
    async with nodes(tmp_path, pg_db, 3) as daemons, aiohttp.ClientSession() as session:
        load = Load()
        loader = asyncio.create_task(keep_triggering(session, daemons, load))
        try:
            await wait_for(lambda: len(load.acknowledged) >= 300, timeout=60, interval=0.1)
            # Runs that outlast the fencing: executing when PostgreSQL stops, still at it when
            # their node gives up on its heartbeat (after dead_after_s - heartbeat_s).
            long = [
                (await trigger(session, d.url, "sleepy", 1, {"seconds": 30, "retry_seconds": 0}))[0] for d in daemons
            ]
            processing = "SELECT count(*) FROM runs WHERE status = 'PROCESSING' AND id = ANY(%s)"
            await wait_for(lambda: query(pg_db, processing, long)[0][0] == len(long), timeout=20, interval=0.1)
            before = len(load.acknowledged)
            await asyncio.to_thread(pg_restartable.stop, "fast")
            stopped = time.monotonic()

            async def all_unready() -> bool:
                return await readiness(session, daemons) == [503] * 3

            await wait_for(all_unready, timeout=OUTAGE_S - 2, interval=0.2)
            await wait_for(lambda: load.refused > 0, timeout=OUTAGE_S - 1 - (time.monotonic() - stopped))
            unready_after_s = time.monotonic() - stopped
            await asyncio.sleep(OUTAGE_S - (time.monotonic() - stopped))  # the outage lasts this long
            await asyncio.to_thread(pg_restartable.start)
            restarted = time.monotonic()

            async def all_ready() -> bool:
                return await readiness(session, daemons) == [200] * 3

            await wait_for(all_ready, timeout=30, interval=0.2)
            ready_after_s = time.monotonic() - restarted
            during = len(load.acknowledged) - before
            await wait_for(lambda: len(load.acknowledged) >= before + during + 300, timeout=30, interval=0.1)
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)

        await wait_for(lambda: unfinished(pg_db) == 0, timeout=60, interval=0.5)
        logged = tracebacks(daemons)
        fenced = [bool(d.events("node_fenced")) for d in daemons]
        declared_dead = sorted(name for d in daemons for e in d.events("nodes_declared_dead") for name in e["nodes"])

    assert load.unexpected == []
    rows = {
        run_id: (status, error, retry_of)
        for run_id, status, error, retry_of in query(pg_db, "SELECT id, status, error, retry_of FROM runs")
    }
    assert sorted(set(load.acknowledged) - set(rows)) == [], "acknowledged runs lost"
    assert {status for status, _, _ in rows.values()} <= set(TERMINAL)
    # Exactly one terminal state: one terminal status event per run, none written twice.
    ends = collections.Counter(
        run_id
        for (run_id,) in query(
            pg_db, "SELECT run_id FROM events WHERE type = 'status_update' AND status = ANY(%s)", list(TERMINAL)
        )
    )
    assert {run_id: n for run_id, n in ends.items() if n != 1} == {}
    assert set(ends) == set(rows)
    ran = collections.Counter(run_id for run_id, _ in executions(tmp_path))
    assert [run_id for run_id, n in ran.items() if n > 1] == [], "a run executed twice"
    completed = {run_id for run_id, (status, _, _) in rows.items() if status == "COMPLETED"}
    assert completed <= set(ran)
    # A run the outage interrupted (its node fenced itself, or was declared dead and its runs
    # taken over) ends FAILED as interrupted, and its job's on_interrupt = "retry" re-queues it
    # once as a new run: the work may run again under the new id, never twice under one id.
    failed = {run_id: error for run_id, (status, error, _) in rows.items() if status == "FAILED"}
    assert {run_id: e for run_id, e in failed.items() if not e.startswith("interrupted")} == {}
    retries = collections.Counter(retry_of for _, _, retry_of in rows.values() if retry_of is not None)
    assert {run_id: retries[run_id] for run_id in failed if retries[run_id] != 1} == {}
    assert set(retries) <= set(failed)
    retry_of = {retry_of: run_id for run_id, (_, _, retry_of) in rows.items() if retry_of is not None}

    def last_of(run_id: int) -> int:
        while run_id in retry_of:
            run_id = retry_of[run_id]
        return run_id

    assert {r for r in load.acknowledged + long if rows[last_of(r)][0] != "COMPLETED"} == set()
    assert [rows[r][0] for r in long] == ["FAILED"] * len(long), "fenced runs were interrupted"
    assert [ran[r] for r in long] == [1] * len(long)
    assert fenced == [True] * len(daemons), "each node fenced itself during the outage"
    assert logged == [], "tracebacks in the nodes' logs"
    print(
        json.dumps(
            {
                "acknowledged": len(load.acknowledged),
                "refused_503": load.refused,
                "unanswered": load.unanswered,
                "interrupted": len(failed),
                "fenced_runs_ended": sorted({rows[r][1] for r in long}),
                "declared_dead": declared_dead,
                "all_unready_after_s": round(unready_after_s, 2),
                "all_ready_after_restart_s": round(ready_after_s, 2),
            }
        )
    )


async def kill_and_restart(daemons: Sequence[DaemonProcess], rng: random.Random, until: float) -> list[str]:
    """SIGKILL one node at a random moment of a second, restart it, and again, until `until`
    (wall clock). One node at a time: the others are alive while it is down."""
    kills = []
    while time.time() < until:
        await asyncio.sleep(rng.uniform(0.5, 3.0))  # the next kill comes after a random delay
        moment = rng.choice(sorted(MOMENTS))
        at = math.floor(time.time()) + 1 + rng.uniform(*MOMENTS[moment])
        victim = rng.randrange(len(daemons))
        await asyncio.sleep(at - time.time())
        daemons[victim].signal(signal.SIGKILL)
        kills.append(f"node{victim} {moment} at {time.time():.3f}")
        await daemons[victim].wait()
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # and stays down a while
        await daemons[victim].start()
    return kills


@pytest.mark.timeout(CRON_S + 150)
async def test_per_second_cron_with_nodes_killed_at_random_makes_each_fire_once(tmp_path, pg_db):
    seed = int(os.environ.get("JOBD_FAULT_SEED") or random.randrange(2**32))
    print(f"JOBD_FAULT_SEED={seed}")
    rng = random.Random(seed)
    async with nodes(tmp_path, pg_db, 3, TICKS) as daemons:
        kills = await kill_and_restart(daemons, rng, until=time.time() + CRON_S - 5)
        # The window ends at the last second begun with all three nodes up again; once every job
        # has its fire, nothing in the window is still to come.
        end = math.floor(time.time()) * 1000
        fired = "SELECT count(DISTINCT job) FROM fires WHERE scheduled_for >= %s"
        await wait_for(lambda: query(pg_db, fired, end)[0][0] == 3, timeout=15, interval=0.2)
        active = "SELECT count(*) FROM runs WHERE status IN ('PENDING', 'PROCESSING') AND scheduled_for <= %s"
        await wait_for(lambda: query(pg_db, active, end)[0][0] == 0, timeout=30, interval=0.2)
        logged = tracebacks(daemons)

    fires = query(pg_db, "SELECT job, scheduled_for, run_id, skipped FROM fires WHERE scheduled_for <= %s", end)
    runs = query(
        pg_db,
        "SELECT id, job, scheduled_for, triggered_by, retry_of, status, error FROM runs WHERE scheduled_for <= %s",
        end,
    )
    # A fire is a run made by the cron loop (or by a catch-up at a node's start); the retry of
    # an interrupted one repeats its scheduled_for but is no new fire.
    made = collections.defaultdict(list)
    for run_id, job, at, triggered_by, retry_of, _, _ in runs:
        if retry_of is None:
            assert triggered_by in ("cron", "catchup"), (run_id, triggered_by)
            made[job, at].append(run_id)
    skips = {(job, at) for job, at, run_id, skipped in fires if skipped}
    recorded = {(job, at): run_id for job, at, run_id, skipped in fires if not skipped}
    duplicates, misses = [], []
    for job in ("tick0", "tick1", "tick2"):
        first = min(at for j, at, _, _ in fires if j == job)
        for at in range(first, end + 1, 1000):
            outcomes = len(made.get((job, at), [])) + ((job, at) in skips)
            if outcomes > 1:
                duplicates.append((job, at, made.get((job, at)), (job, at) in skips))
            elif outcomes == 0:
                misses.append((job, at))
    report = f"seed {seed}: duplicates {duplicates}, misses {misses}; kills: {kills}"
    assert (duplicates, misses) == ([], []), report
    assert all(at % 1000 == 0 for _, at in made), report
    assert {key: ids[0] for key, ids in made.items()} == recorded, "each run is its fire's"
    assert not any(job == "tick0" or job == "tick1" for job, _ in skips), "allow never skips"
    assert any(job == "tick2" for job, _ in skips)
    ran = collections.Counter(run_id for run_id, _ in executions(tmp_path))
    assert [run_id for run_id, n in ran.items() if n > 1] == [], "a run executed twice"
    ended = {run_id: (status, error) for run_id, _, _, _, _, status, error in runs}
    assert {r for r, (status, _) in ended.items() if status not in TERMINAL} == set()
    retried = {retry_of for _, _, _, _, retry_of, _, _ in runs if retry_of is not None}
    assert {r for r in retried if not ended[r][1].startswith("interrupted")} == set()
    assert logged == [], "tracebacks in the nodes' logs"
    print(
        json.dumps(
            {"seed": seed, "kills": len(kills), "fires": len(fires), "skips": len(skips), "retries": len(retried)}
        )
    )


async def test_a_reaper_paused_while_it_holds_the_lock_keeps_no_other_node_from_reaping(pg_db):
    """A node SIGSTOPped inside its reaper block used to keep the session-level lock for as long
    as it stayed stopped, and with it every other node from declaring anyone dead."""
    from jobd.store.postgres import connect
    from jobd.store.postgres.cluster import reaper_lock

    async def reaps(conn: psycopg.AsyncConnection[Any]) -> bool:
        async with reaper_lock(conn, hold_s=0.5) as held:
            return held

    async with await connect(pg_db) as paused, await connect(pg_db) as other:
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            async with reaper_lock(paused, hold_s=0.5) as held:
                assert held
                assert not await reaps(other)
                # The holder sends nothing more, as a stopped process would: PostgreSQL ends
                # its transaction after hold_s, and the lock with it.
                await wait_for(lambda: reaps(other), timeout=10, interval=0.1)
        assert paused.closed


async def test_a_node_paused_mid_transaction_holds_the_others_up_no_longer_than_its_pool_allows(pg_db):
    """A node SIGSTOPped inside a cron fire's transaction used to keep the fire's row locked for
    as long as it stayed stopped: every other node's fire of that second waited on it, and their
    cron loops with it."""
    from jobd.store.postgres import open_pool
    from jobd.store.postgres.cluster import record_fire

    pool = open_pool(pg_db, min_size=2, max_size=2, idle_in_transaction_s=0.5)
    await pool.open(wait=True)
    async with pool, pool.connection() as paused, pool.connection() as other:
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            async with paused.transaction():
                assert await record_fire(paused, "tick", 1000, "paused")
                # The paused node sends nothing more; the other's fire waits on its row until
                # PostgreSQL ends the paused transaction, and then is the one made.
                async with asyncio.timeout(10), other.transaction():
                    assert await record_fire(other, "tick", 1000, "other")
    assert query(pg_db, "SELECT node FROM fires WHERE job = 'tick'") == [("other",)]
