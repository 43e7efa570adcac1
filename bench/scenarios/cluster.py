"""Scenarios 7 to 10: cluster mode, N `jobd serve` nodes on one PostgreSQL (bench/postgres.py).

Every node is a real process with `[store] url` on the scenario's fresh database and its own
`[cluster] node_name`; the nodes, PostgreSQL and the load generator share the machine's cores.

7. Throughput as scenario 1 measures it (first trigger to the last COMPLETED on one firehose),
   the 64 clients spread round-robin over the nodes and the firehose on the first node. A 503 is
   counted and sent again after its Retry-After. After 240 s the clients stop sending and the
   figure is the runs finished by then per second, so a slow cluster still yields one. With 3
   nodes it also says where the time goes: CPU of the nodes and of PostgreSQL per run, and the
   statements and transactions per run (bench/postgres.py says how each is read).
8. Latency on an idle 3-node cluster: sequential runs, each triggered on the next node
   round-robin, timed to its COMPLETED on the first node's firehose.
9. Failover: a node executing long runs of an `on_interrupt = "retry"` job is SIGKILLed; the
   clock stops when each of its runs has a retry PROCESSING on another node (read from the
   database every 20 ms).
10. Cron on 3 nodes: fire lag as scenario 5 reads it (started_at less scheduled_for), and the
   fires made twice or not at all, from the runs table.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import psycopg

from bench.daemon import JobdProcess, noop_job
from bench.postgres import Database
from bench.report import Figure, at_least, at_most, percentile
from bench.scenarios import Context, Scenario, own_cpu_s
from bench.scenarios import latency as latency_scenario
from bench.scenarios.throughput import CLIENTS, FINISHED, WARMUP_RUNS, trigger_all
from bench.sse import Firehose

WORKERS = 16  # per node, as scenario 1's daemon
SLEEP_HANDLER = "bench.handlers:sleep"


@contextlib.asynccontextmanager
async def cluster(
    ctx: Context,
    count: int,
    jobs: Mapping[str, Mapping[str, Any]],
    *,
    concurrency: int = WORKERS,
    cluster_settings: Mapping[str, Any] | None = None,
    workers: Mapping[str, Any] | None = None,
) -> AsyncIterator[tuple[Database, list[JobdProcess]]]:
    """`count` nodes on a fresh database, started side by side; stopped and dropped after."""
    if ctx.postgres is None:
        raise RuntimeError("no PostgreSQL for the cluster scenarios")
    database = await ctx.postgres.database()

    def node(index: int) -> JobdProcess:
        return ctx.jobd(
            jobs,
            tag=f"node{index}",
            concurrency=concurrency,
            sections={
                "store": {"url": database.url},
                "cluster": {"node_name": f"node{index}", **(cluster_settings or {})},
                **({"workers": dict(workers)} if workers else {}),
            },
        )

    async def start(index: int) -> None:
        # The port is picked before the node binds it: on a busy machine an outgoing connection
        # (the nodes' own to PostgreSQL) may take it first. Then the node gets another.
        for attempt in range(3):
            try:
                await nodes[index].start()
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                nodes[index] = node(index)

    nodes = [node(index) for index in range(count)]
    try:
        await asyncio.gather(*(start(index) for index in range(count)))
        yield database, nodes
    finally:
        await asyncio.gather(*(started.stop() for started in nodes), return_exceptions=True)
        await ctx.postgres.drop(database)


async def rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(query, args)
        return await cursor.fetchall()


def warnings_of(nodes: Sequence[JobdProcess]) -> list[dict[str, Any]]:
    return [dict(record, node=index) for index, node in enumerate(nodes) for record in node.warnings()][:5]


def per_run(value: float | None, runs: int, scale: float = 1.0) -> float | None:
    return None if value is None or runs <= 0 else round(value * scale / runs, 2)


async def _throughput(
    ctx: Context, count: int, *, runs: int, per_request: int, key: str, label: str, target: float | None
) -> list[Figure]:
    cap_s = ctx.size(240, 60)
    async with cluster(ctx, count, {"bench": noop_job()}) as (database, nodes):
        urls = [f"{node.url}/api/v1/jobs/bench/trigger" for node in nodes]
        connector = aiohttp.TCPConnector(limit=CLIENTS + 4)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            Firehose(http, nodes[0].url, job="bench", status=FINISHED) as firehose,
        ):
            await trigger_all(http, urls, [b"{}"] * WARMUP_RUNS, clients=8)
            await firehose.wait_finished(WARMUP_RUNS, timeout=60)
            if per_request == 1:
                bodies = [b'{"params": {"n": %d}}' % i for i in range(runs)]
            else:
                one = b'{"params": {}}'
                bodies = [
                    b'{"runs": [' + b", ".join([one] * min(per_request, runs - start)) + b"]}"
                    for start in range(0, runs, per_request)
                ]
            commit_ms = await database.commit_ms()
            before = await database.counters()
            await database.reset_statements()
            node_cpu = [node.cpu_s() for node in nodes]
            pg_cpu, own = database.cpu_s(), own_cpu_s()
            started = time.monotonic()
            refused: list[bytes] = []
            deadline = started + cap_s
            clients = min(CLIENTS, len(bodies))
            accepted = await trigger_all(http, urls, bodies, clients=clients, refused=refused, until=deadline)
            all_accepted = time.monotonic()
            try:
                last = await firehose.wait_finished(
                    WARMUP_RUNS + accepted, timeout=max(1.0, deadline - time.monotonic())
                )
                capped = accepted < runs
            except TimeoutError:
                last, capped = time.monotonic(), True
            finished = firehose.finished - WARMUP_RUNS
            if capped:
                print(
                    f"  {ctx.name}: stopped after {cap_s} s: {accepted:,} of {runs:,} runs accepted, "
                    f"{finished:,} finished",
                    file=sys.stderr,
                    flush=True,
                )
            elapsed = last - started
            node_cpu = [node.cpu_s() - used for node, used in zip(nodes, node_cpu, strict=True)]
            pg_after, loadgen_cpu = database.cpu_s(), own_cpu_s() - own
            pg_used = None if pg_cpu is None or pg_after is None else pg_after - pg_cpu
            after = await database.counters()
            top = await database.top_statements(max(1, finished))
            if firehose.failed:
                raise RuntimeError(f"not COMPLETED: {firehose.failed[:3]}")
        per_node = dict(await rows(database.dsn, "SELECT node, count(*) FROM runs GROUP BY node ORDER BY node"))
        warnings = warnings_of(nodes)
    jobd_cpu = sum(node_cpu)
    statements = after.statements
    transactions = after.transactions - before.transactions
    notes = {
        "nodes": count,
        "runs": runs,
        "requests": len(bodies),
        "clients": min(CLIENTS, len(bodies)),
        "workers_per_node": WORKERS,
        "elapsed_s": round(elapsed, 3),
        "capped": capped,
        "cap_s": cap_s,
        "accepted": accepted,
        "finished": finished,
        "accepted_per_s": round(accepted / (all_accepted - started)),
        "commit_ms_before": round(commit_ms, 2),
        "refused_503": len(refused),
        "refused_503_first": refused[0].decode(errors="replace")[:300] if refused else None,
        "runs_executed_per_node": per_node,
        "jobd_cores": round(jobd_cpu / elapsed, 2),
        "jobd_cores_per_node": [round(used / elapsed, 2) for used in node_cpu],
        "postgres_cores": None if pg_used is None else round(pg_used / elapsed, 2),
        "loadgen_cores": round(loadgen_cpu / elapsed, 2),
        "jobd_cpu_us_per_run": per_run(jobd_cpu, finished, 1e6),
        "postgres_cpu_us_per_run": per_run(pg_used, finished, 1e6),
        "statements_per_run": per_run(statements, finished),
        "statements_source": "pg_stat_statements (calls, BEGIN/COMMIT included)" if statements is not None else None,
        "transactions_per_run": per_run(transactions, finished),
        "transactions_source": "pg_stat_database xact_commit + xact_rollback",
        "top_statements_by_total_time": top,
        "daemon_warnings": warnings,
    }
    value = finished / elapsed
    figures = [Figure(key, label, "runs/s", [value], at_least(target) if target else None, notes=notes)]
    # A client that is refused waits for the Retry-After and sends again; the refusals count here.
    figures.append(
        Figure(
            key.replace("_runs_per_s", "_refused"),
            f"{label}: triggers refused (503)",
            "requests",
            [len(refused)],
            at_most(0),
        )
    )
    if count == 3 and per_request == 1:
        costs: list[tuple[str, str, str, float | None]] = [
            ("jobd_cpu_us_per_run", "jobd CPU per run (all nodes)", "µs", per_run(jobd_cpu, finished, 1e6)),
            ("pg_cpu_us_per_run", "PostgreSQL CPU per run", "µs", per_run(pg_used, finished, 1e6)),
            ("statements_per_run", "SQL statements per run", "statements", per_run(statements, finished)),
            ("transactions_per_run", "transactions per run", "transactions", per_run(transactions, finished)),
        ]
        figures += [
            Figure(f"cluster_3_{name}", f"cluster, 3 nodes: {text}", unit, [value])
            for name, text, unit, value in costs
            if value is not None
        ]
    return figures


def _http_triggered(nodes: int, target: float | None) -> Scenario:
    """Scenario 7 with `nodes` nodes: 10,000 singly triggered no-op runs."""

    async def scenario(ctx: Context) -> list[Figure]:
        return await _throughput(
            ctx,
            nodes,
            runs=ctx.size(10_000, 300),
            per_request=1,
            key=f"cluster_{nodes}_runs_per_s",
            label=f"cluster, {nodes} node{'s' if nodes > 1 else ''}: HTTP-triggered no-op runs",
            target=target,
        )

    return scenario


one_node = _http_triggered(1, None)
two_nodes = _http_triggered(2, None)
three_nodes = _http_triggered(3, 2_000)


async def batch(ctx: Context) -> list[Figure]:
    return await _throughput(
        ctx,
        3,
        runs=ctx.size(10_000, 2_000),
        per_request=1_000,
        key="cluster_3_batch_runs_per_s",
        label="cluster, 3 nodes: batch-triggered no-op runs",
        target=None,
    )


async def latency(ctx: Context) -> list[Figure]:
    runs = ctx.size(1_000, 60)
    async with (
        cluster(ctx, 3, {"bench": noop_job()}) as (_, nodes),
        aiohttp.ClientSession() as http,
        Firehose(http, nodes[0].url, job="bench") as firehose,
    ):
        accepted, processing, completed = await latency_scenario.sequential(
            http, firehose, [node.url for node in nodes], runs, WARMUP_RUNS
        )
        warnings = warnings_of(nodes)
    notes = {
        "nodes": 3,
        "runs": runs,
        "warmup_runs": WARMUP_RUNS,
        "trigger_to_202_ms": {"p50": round(percentile(accepted, 50), 2), "p99": round(percentile(accepted, 99), 2)},
        "trigger_to_processing_ms": {
            "p50": round(percentile(processing, 50), 2),
            "p99": round(percentile(processing, 99), 2),
        },
        "slowest_completed_ms": [round(value, 1) for value in sorted(completed)[-5:]],
        "daemon_warnings": warnings,
    }
    return [
        Figure(
            "cluster_latency_completed_p50_ms",
            "cluster, 3 idle nodes: trigger → COMPLETED, p50",
            "ms",
            [percentile(completed, 50)],
            at_most(10),
            notes=notes,
        ),
        Figure(
            "cluster_latency_completed_p99_ms",
            "cluster, 3 idle nodes: trigger → COMPLETED, p99",
            "ms",
            [percentile(completed, 99)],
            at_most(20),
        ),
        Figure(
            "cluster_latency_completed_max_ms",
            f"cluster, 3 idle nodes: slowest of {runs:,} sequential runs",
            "ms",
            [max(completed)],
            at_most(100),
        ),
    ]


async def _until(condition: Any, timeout: float, interval: float = 0.02) -> float:
    """Polls the async `condition` until it holds; returns the monotonic time it was seen to."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(interval)
    return time.monotonic()


async def failover(ctx: Context) -> list[Figure]:
    heartbeat_s, dead_after_s = ctx.size(1.0, 0.5), ctx.size(5.0, 2.0)
    long_runs = 6
    job = {"handler": SLEEP_HANDLER, "overlap": "allow", "max_concurrency": 100, "on_interrupt": "retry"}
    async with (
        cluster(
            ctx,
            3,
            {"sleepy": job},
            cluster_settings={"heartbeat_s": heartbeat_s, "dead_after_s": dead_after_s},
            workers={"shutdown_grace_s": 0.5},
        ) as (database, nodes),
        aiohttp.ClientSession() as http,
        await psycopg.AsyncConnection.connect(database.dsn, autocommit=True) as conn,
    ):

        async def one(query: str, *args: Any) -> Any:
            cursor = await conn.execute(query, args)
            row = await cursor.fetchone()
            return None if row is None else row[0]

        # Triggered one by one on different nodes, so that the runs spread over the nodes.
        ids: list[int] = []
        for index in range(long_runs):
            url = f"{nodes[index % len(nodes)].url}/api/v1/jobs/sleepy/trigger"
            async with http.post(url, json={"params": {"seconds": 600}}) as response:
                body = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"trigger answered {response.status}: {body}")
            ids.append(body["run"]["id"])
        processing = "SELECT count(*) FROM runs WHERE status = 'PROCESSING' AND id = ANY(%s)"

        async def all_processing() -> bool:
            return bool(await one(processing, ids) == long_runs)

        await _until(all_processing, timeout=30)
        victim_name = await one(
            "SELECT node FROM runs WHERE id = ANY(%s) GROUP BY node ORDER BY count(*) DESC, node LIMIT 1", ids
        )
        owned = [
            run_id
            for (run_id,) in await (
                await conn.execute("SELECT id FROM runs WHERE node = %s AND id = ANY(%s)", (victim_name, ids))
            ).fetchall()
        ]
        victim = nodes[int(victim_name.removeprefix("node"))]
        assert victim.proc is not None
        killed_at = time.monotonic()
        victim.proc.kill()
        await victim.proc.wait()

        async def declared_dead() -> bool:
            return bool(await one("SELECT dead_at IS NOT NULL FROM nodes WHERE name = %s", victim_name))

        async def taken_over() -> bool:
            moved = await one(
                "SELECT count(*) FROM runs WHERE retry_of = ANY(%s) AND status = 'PROCESSING' AND node <> %s",
                owned,
                victim_name,
            )
            return bool(moved == len(owned))

        dead_at = await _until(declared_dead, timeout=dead_after_s + 30)
        running_at = await _until(taken_over, timeout=dead_after_s + 30)
        warnings = warnings_of([node for node in nodes if node is not victim])
    took = running_at - killed_at
    notes = {
        "nodes": 3,
        "heartbeat_s": heartbeat_s,
        "dead_after_s": dead_after_s,
        "runs_on_the_killed_node": len(owned),
        "declared_dead_after_s": round(dead_at - killed_at, 2),
        "poll_interval_s": 0.02,
        "daemon_warnings": warnings,
    }
    return [
        Figure(
            "cluster_failover_s",
            f"cluster: SIGKILL → runs PROCESSING elsewhere (dead_after_s = {dead_after_s:g})",
            "s",
            [took],
            at_most(dead_after_s + 5),
            notes=notes,
        )
    ]


async def cron(ctx: Context) -> list[Figure]:
    jobs = ctx.size(50, 10)
    window_s = ctx.size(30, 5)
    config = {f"every-second-{i:03d}": noop_job(schedule="* * * * * *") for i in range(jobs)}
    async with cluster(ctx, 3, config, concurrency=jobs) as (database, nodes):
        started_ms = time.time_ns() // 1_000_000
        await asyncio.sleep(window_s + 1.0)
        ended_ms = started_ms + window_s * 1000
        window = "triggered_by = 'cron' AND scheduled_for > %s AND scheduled_for <= %s"

        async def all_started() -> bool:
            waiting = await rows(
                database.dsn, f"SELECT count(*) FROM runs WHERE {window} AND started_at IS NULL", started_ms, ended_ms
            )
            return bool(waiting[0][0] == 0)

        with contextlib.suppress(TimeoutError):
            await _until(all_started, timeout=10, interval=0.2)
        fired = await rows(
            database.dsn,
            f"SELECT job, scheduled_for, started_at, created_at, node FROM runs WHERE {window}",
            started_ms,
            ended_ms,
        )
        fires_by_node = dict(await rows(database.dsn, "SELECT node, count(*) FROM fires GROUP BY node ORDER BY node"))
        warnings = warnings_of(nodes)
        skips = sum(
            1 for node in nodes for record in node.warnings() if record.get("event") == "scheduler.fires_skipped"
        )
    first_second = started_ms // 1000 + 1
    due = {
        (f"every-second-{i:03d}", second * 1000)
        for i in range(jobs)
        for second in range(first_second, ended_ms // 1000 + 1)
    }
    seen: dict[tuple[str, int], int] = {}
    for job, scheduled_for, *_ in fired:
        seen[(job, scheduled_for)] = seen.get((job, scheduled_for), 0) + 1
    duplicates = sum(count - 1 for count in seen.values())
    missed = due - set(seen)
    misses = len(missed)
    missed_by_second: dict[int, int] = {}
    for _, at in missed:
        second = (at - first_second * 1000) // 1000
        missed_by_second[second] = missed_by_second.get(second, 0) + 1
    lags = [started - scheduled for _, scheduled, started, _, _ in fired if started is not None]
    created = [made - scheduled for _, scheduled, _, made, _ in fired]
    executed: dict[str, int] = {}
    for *_, node in fired:
        executed[node] = executed.get(node, 0) + 1
    notes = {
        "nodes": 3,
        "jobs": jobs,
        "window_s": window_s,
        "fires": len(fired),
        "fires_expected": len(due),
        "not_started": len(fired) - len(lags),
        "max_ms": max(lags, default=None),
        "scheduled_to_created_ms": {"p50": percentile(created, 50), "p99": percentile(created, 99)}
        if created
        else None,
        "missed_per_second_of_the_window": dict(sorted(missed_by_second.items())),
        "skips_logged": skips,
        "fires_recorded_per_node": fires_by_node,
        "runs_executed_per_node": executed,
        "daemon_warnings": warnings,
    }
    if not lags:
        raise RuntimeError(f"no cron run started in {window_s} s")
    return [
        Figure(
            "cluster_fire_lag_p50_ms", "cluster, 3 nodes: cron fire lag, p50", "ms", [percentile(lags, 50)], notes=notes
        ),
        Figure("cluster_fire_lag_p99_ms", "cluster, 3 nodes: cron fire lag, p99", "ms", [percentile(lags, 99)]),
        Figure("cluster_fire_duplicates", "cluster, 3 nodes: fires made twice", "fires", [duplicates], at_most(0)),
        Figure("cluster_fire_misses", "cluster, 3 nodes: fires not made", "fires", [misses], at_most(0)),
    ]
