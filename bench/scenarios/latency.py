"""Scenario 3: latency on an idle daemon, as an SSE client sees it.

One run at a time: the clock starts when the trigger is sent and stops when its PROCESSING and
COMPLETED status_updates arrive on the firehose (opened before, filtered to the job).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp

from bench.daemon import noop_job
from bench.report import Figure, at_most, percentile
from bench.scenarios import Context
from bench.sse import Firehose

WARMUP_RUNS = 20


async def sequential(
    http: aiohttp.ClientSession, firehose: Firehose, urls: Sequence[str], runs: int, warmup: int
) -> tuple[list[float], list[float], list[float]]:
    """`warmup` then `runs` runs one at a time, each triggered at the next of `urls` in turn:
    the milliseconds from sending each trigger to its 202, its PROCESSING and its COMPLETED."""
    accepted: list[float] = []
    processing: list[float] = []
    completed: list[float] = []
    for index in range(warmup + runs):
        started = time.monotonic()
        url = f"{urls[index % len(urls)]}/api/v1/jobs/bench/trigger"
        async with http.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as response:
            body = await response.json()
            answered = time.monotonic()
            if response.status != 202:
                raise RuntimeError(f"trigger answered {response.status}: {body}")
        run_id = body["run"]["id"]
        running = await firehose.wait(run_id, "PROCESSING")
        done = await firehose.wait(run_id, "COMPLETED")
        if index >= warmup:
            accepted.append((answered - started) * 1000)
            processing.append((running - started) * 1000)
            completed.append((done - started) * 1000)
    return accepted, processing, completed


async def idle(ctx: Context) -> list[Figure]:
    runs = ctx.size(500, 50)
    async with (
        ctx.jobd({"bench": noop_job()}) as jobd,
        aiohttp.ClientSession() as http,
        Firehose(http, jobd.url, job="bench") as firehose,
    ):
        accepted, processing, completed = await sequential(http, firehose, [jobd.url], runs, WARMUP_RUNS)
        warnings = jobd.warnings()
    notes = {
        "runs": runs,
        "warmup_runs": WARMUP_RUNS,
        "trigger_to_202_ms": {"p50": round(percentile(accepted, 50), 2), "p99": round(percentile(accepted, 99), 2)},
        "daemon_warnings": warnings[:5],
    }
    return [
        Figure(
            "latency_processing_p50_ms",
            "trigger → PROCESSING, idle, p50",
            "ms",
            [percentile(processing, 50)],
            notes=notes,
        ),
        Figure("latency_processing_p99_ms", "trigger → PROCESSING, idle, p99", "ms", [percentile(processing, 99)]),
        Figure(
            "latency_completed_p50_ms", "trigger → COMPLETED, idle, p50", "ms", [percentile(completed, 50)], at_most(3)
        ),
        Figure(
            "latency_completed_p99_ms", "trigger → COMPLETED, idle, p99", "ms", [percentile(completed, 99)], at_most(10)
        ),
    ]
