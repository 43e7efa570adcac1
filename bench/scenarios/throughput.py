"""Scenarios 1 and 2: runs/s from the first trigger to the last COMPLETED seen on the firehose.

64 clients (tasks sharing one keep-alive connection pool, one connection each) send triggers
back to back; every 202 means the run is committed. The clock stops when the firehose (filtered
to finished runs of the job) has shown every run finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench.daemon import noop_job
from bench.report import Figure, at_least
from bench.scenarios import Context, own_cpu_s
from bench.sse import Firehose

CLIENTS = 64
WARMUP_RUNS = 50
FINISHED = "COMPLETED,PARTIAL,FAILED,CANCELLED"
JSON = {"Content-Type": "application/json"}


async def trigger_all(
    http: aiohttp.ClientSession,
    urls: Sequence[str],
    bodies: Sequence[bytes],
    clients: int,
    refused: list[bytes] | None = None,
    until: float | None = None,
) -> int:
    """POST every body from `clients` concurrent clients, client i to urls[i % len(urls)] (the
    nodes of a cluster, round-robin); returns the runs accepted. With a `refused` list, a 503 is
    kept there and the body sent again after its Retry-After, as a client that honours it would.
    With `until` (a monotonic time), the clients send nothing more after it."""
    queue = iter(bodies)
    accepted = 0

    async def client(url: str) -> None:
        nonlocal accepted
        for body in queue:
            if until is not None and time.monotonic() > until:
                return
            while True:
                async with http.post(url, data=body, headers=JSON) as response:
                    data = await response.read()
                    if response.status == 503 and refused is not None:
                        refused.append(data)
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                        if until is not None and time.monotonic() > until:
                            return
                        continue
                    if response.status != 202:
                        raise RuntimeError(f"trigger answered {response.status}: {data[:300]!r}")
                    accepted += data.count(b'"status":"PENDING"')
                    break

    await asyncio.gather(*(client(urls[index % len(urls)]) for index in range(clients)))
    return accepted


async def _measure(
    ctx: Context,
    job: dict[str, Any],
    *,
    runs: int,
    per_request: int,
    clients: int,
    key: str,
    label: str,
    target: float | None,
    concurrency: int = 16,
) -> list[Figure]:
    async with ctx.jobd({"bench": job}, concurrency=concurrency) as jobd:
        url = f"{jobd.url}/api/v1/jobs/bench/trigger"
        connector = aiohttp.TCPConnector(limit=clients + 4)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            Firehose(http, jobd.url, job="bench", status=FINISHED) as firehose,
        ):
            await trigger_all(http, [url], [b"{}"] * WARMUP_RUNS, clients=8)
            await firehose.wait_finished(WARMUP_RUNS, timeout=60)
            if per_request == 1:
                bodies = [b'{"params": {"n": %d}}' % i for i in range(runs)]
            else:
                one = b'{"params": {}}'
                bodies = [
                    b'{"runs": [' + b", ".join([one] * min(per_request, runs - start)) + b"]}"
                    for start in range(0, runs, per_request)
                ]
            cpu, own = jobd.cpu_s(), own_cpu_s()
            started = time.monotonic()
            accepted = await trigger_all(http, [url], bodies, clients=min(clients, len(bodies)))
            all_accepted = time.monotonic()
            last = await firehose.wait_finished(WARMUP_RUNS + runs, timeout=600)
            elapsed = last - started
            daemon_cpu, loadgen_cpu = jobd.cpu_s() - cpu, own_cpu_s() - own
            if accepted != runs or firehose.failed:
                raise RuntimeError(f"{accepted} of {runs} accepted; not COMPLETED: {firehose.failed[:3]}")
        warnings = jobd.warnings()
    notes = {
        "runs": runs,
        "requests": len(bodies),
        "clients": min(clients, len(bodies)),
        "workers": concurrency,
        "elapsed_s": round(elapsed, 3),
        "accepted_per_s": round(runs / (all_accepted - started)),
        "daemon_cores": round(daemon_cpu / elapsed, 2),
        "loadgen_cores": round(loadgen_cpu / elapsed, 2),
        "daemon_cpu_us_per_run": round(daemon_cpu / runs * 1e6),
        "daemon_warnings": warnings[:5],
    }
    return [Figure(key, label, "runs/s", [runs / elapsed], at_least(target) if target else None, notes=notes)]


async def python_handler(ctx: Context) -> list[Figure]:
    return await _measure(
        ctx,
        noop_job(),
        runs=ctx.size(10_000, 1_000),
        per_request=1,
        clients=CLIENTS,
        key="http_noop_runs_per_s",
        label="HTTP-triggered no-op runs to COMPLETED",
        target=3_000,
    )


async def command(ctx: Context) -> list[Figure]:
    job = {"command": ["true"], "overlap": "allow", "max_concurrency": 1000}
    return await _measure(
        ctx,
        job,
        runs=ctx.size(10_000, 200),
        per_request=1,
        clients=CLIENTS,
        key="http_command_runs_per_s",
        label="HTTP-triggered `true` runs to COMPLETED",
        target=None,
    )


async def batch(ctx: Context) -> list[Figure]:
    return await _measure(
        ctx,
        noop_job(),
        runs=ctx.size(10_000, 2_000),
        per_request=1_000,
        clients=CLIENTS,
        key="batch_noop_runs_per_s",
        label="batch-triggered no-op runs to COMPLETED",
        target=15_000,
    )
