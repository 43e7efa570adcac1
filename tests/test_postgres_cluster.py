"""What nodes share besides runs: a cron fire created once whichever nodes try, job state and
pause, heartbeats, and one reaper at a time declaring dead nodes and taking their runs."""

from __future__ import annotations

import asyncio

from jobd.cluster.nodes import NodeLife
from jobd.config import ClusterConfig
from jobd.models import Run, RunStatus, TriggerSource, now_ms
from jobd.store.base import JobState
from jobd.store.postgres import OwnConnection, connect, open_pool
from jobd.store.postgres.cluster import (
    declare_dead,
    heartbeat,
    last_fires,
    leave,
    list_nodes,
    load_job_states,
    reaper_lock,
    record_fire,
    register_node,
    save_job_state,
    set_paused,
    settle_fire,
    trim_fires,
)
from jobd.store.postgres.runs import claim, finish, get_run, insert_runs, next_run_ids


async def test_a_fire_recorded_by_three_nodes_at_once_is_created_once(pg_db: str) -> None:
    connections = [await connect(pg_db) for _ in range(3)]
    try:
        for conn in connections:
            await conn.execute("BEGIN")
        # All three insert before any commits: the second and third wait on the first's key.
        attempts = [
            asyncio.create_task(record_fire(conn, "tick", 1_000, f"n{i}")) for i, conn in enumerate(connections)
        ]
        done, _ = await asyncio.wait(attempts, timeout=0.3)
        assert len(done) == 1
        [first] = done
        await connections[attempts.index(first)].execute("COMMIT")
        created = [await task for task in attempts]
        for conn in connections:
            if conn is not connections[attempts.index(first)]:
                await conn.execute("COMMIT")
        assert sorted(created) == [False, False, True]
        conn = connections[0]
        await settle_fire(conn, "tick", 1_000, None)
        cur = await conn.execute("SELECT node, run_id, skipped FROM fires")
        [(node, run_id, skipped)] = await cur.fetchall()
        assert node == f"n{created.index(True)}" and run_id is None and skipped
    finally:
        for conn in connections:
            await conn.close()


async def test_catch_up_starts_from_the_last_recorded_fire(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        for at in (1_000, 2_000, 3_000):
            assert await record_fire(conn, "a", at, "n1")
            await settle_fire(conn, "a", at, at // 1000)
        assert await record_fire(conn, "b", 500, "n2")
        assert not await record_fire(conn, "a", 2_000, "n2")
        assert await last_fires(conn) == {"a": 3_000, "b": 500}
        assert await trim_fires(conn, 10_000) == 2  # each job keeps its last fire
        assert await last_fires(conn) == {"a": 3_000, "b": 500}


async def test_job_state_and_pause_are_shared(pg_db: str) -> None:
    async with await connect(pg_db) as one, await connect(pg_db) as other:
        await save_job_state(one, JobState("a", last_fire_at=5, skipped_fires=2, consecutive_failures=1, last_run_id=9))
        await set_paused(other, "a", True)
        await set_paused(other, "b", True)
        states = await load_job_states(one)
        assert states == [
            JobState("a", paused=True, last_fire_at=5, skipped_fires=2, consecutive_failures=1, last_run_id=9),
            JobState("b", paused=True),
        ]


async def test_nodes_beat_and_are_listed(pg_db: str) -> None:
    async with await connect(pg_db) as conn:
        await register_node(conn, "n1", "host1", 101)
        await register_node(conn, "n2", "host2", 102)
        assert await heartbeat(conn, "n1")
        assert not await heartbeat(conn, "unknown")
        await conn.execute("UPDATE nodes SET heartbeat_at = heartbeat_at - 60000 WHERE name = 'n2'")
        nodes = await list_nodes(conn, dead_after_s=30)
        assert [(n.name, n.host, n.pid, n.running, n.alive) for n in nodes] == [
            ("n1", "host1", 101, 0, True),
            ("n2", "host2", 102, 0, False),
        ]
        await leave(conn, "n2")
        assert [n.name for n in await list_nodes(conn, 30)] == ["n1"]


async def test_one_reaper_at_a_time(pg_db: str) -> None:
    async with await connect(pg_db) as one, await connect(pg_db) as other:
        async with reaper_lock(one) as held:
            assert held
            async with reaper_lock(other) as also:
                assert not also
        async with reaper_lock(other) as held:
            assert held


async def test_a_dead_node_s_runs_are_taken_over_and_its_late_write_changes_nothing(pg_db: str) -> None:
    async with await connect(pg_db) as dead, await connect(pg_db) as alive:
        await register_node(dead, "dead", "h", 1)
        await register_node(alive, "alive", "h", 2)
        ids = await next_run_ids(alive, 3)
        now = now_ms()
        await insert_runs(alive, [Run(i, "a", RunStatus.PENDING, TriggerSource.API, created_at=now) for i in ids])
        on_dead = await claim(dead, "dead", 2, {"a": 3})
        [on_alive] = await claim(alive, "alive", 2, {"a": 3})
        await dead.execute("UPDATE nodes SET heartbeat_at = heartbeat_at - 31000 WHERE name = 'dead'")

        async with reaper_lock(alive) as held:
            assert held
            async with alive.transaction():
                taken = await declare_dead(alive, dead_after_s=30)
                assert taken.names == ["dead"]
                assert [c.run.id for c in taken.runs] == [c.run.id for c in on_dead]
                for owned in taken.runs:  # the crash-recovery rule applied by the reaper
                    run = owned.run
                    run.status, run.error, run.finished_at = RunStatus.FAILED, "node lost", now_ms()
                    assert await finish(alive, run, owned.token)

        assert not await heartbeat(dead, "dead")  # fenced: it must stop
        assert await claim(dead, "dead", 5, {"a": 3}) == []  # and claims nothing more
        for owned in on_dead:
            owned.run.status, owned.run.finished_at = RunStatus.COMPLETED, now_ms()
            assert not await finish(dead, owned.run, owned.token)
            stored = await get_run(alive, owned.run.id)
            assert stored is not None and (stored.status, stored.error) == (RunStatus.FAILED, "node lost")
        async with alive.transaction():
            again = await declare_dead(alive, 30)
        assert (again.names, again.runs) == ([], [])
        stored = await get_run(alive, on_alive.run.id)
        assert stored is not None and stored.status is RunStatus.PROCESSING


async def test_the_heartbeat_gets_through_while_the_pool_is_taken(pg_db: str) -> None:
    """A node whose pool is busy (triggers, claims, ends) is alive: its heartbeat has a
    connection of its own, so it neither goes unready nor fences itself."""
    pool = open_pool(pg_db, min_size=1, max_size=1)
    await pool.open(wait=True)
    own = OwnConnection(pg_db)
    fenced: list[str] = []
    config = ClusterConfig(node_name="busy", heartbeat_s=0.3, dead_after_s=1.0)
    life = NodeLife(
        pool.connection,
        config,
        host="h",
        pid=1,
        take_over=lambda conn, runs, reason: asyncio.sleep(0),
        fence=fenced.append,
        unfence=lambda: None,
        beat_connection=own,
    )
    try:
        await life.register()
        async with pool.connection():  # the pool's only connection, held by "a long transaction"
            for _ in range(5):  # longer than dead_after_s - heartbeat_s in all
                await asyncio.sleep(config.heartbeat_s)
                await life.beat()
                assert life.reachable and not fenced
        async with await connect(pg_db) as conn:
            [node] = [n for n in await list_nodes(conn, config.dead_after_s) if n.name == "busy"]
        assert node.alive
    finally:
        await own.close()
        await pool.close()
