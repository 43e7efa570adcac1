"""Scenario 5: the scheduler. Fire lag under a seconds schedule, and what an idle daemon costs.

Fire lag is what jobd's own `jobd_scheduler_fire_lag_seconds` metric measures: a cron run's started_at
less its scheduled_for (the exact second it was due), both recorded by the daemon. "Free
workers": there are as many workers as jobs, so no fire waits for one. The same for one job
alone separates the scheduler's own timing from the cost of the other 199 runs due with it.

Idle CPU is the daemon's user + system CPU time over the window, from /proc, in % of one core.
Its 10,000 jobs are hourly at a minute half an hour away, so none is due during the window: the
daemon holds them in its heap, and 1,000 firehose streams are open and idle (heartbeats only).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench.daemon import noop_job
from bench.holder import HolderGroup
from bench.report import Figure, at_most, percentile
from bench.scenarios import Context
from jobd.models import parse_iso_ms
from jobd.server import raise_open_files_limit


async def _cron_runs(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    params = {"triggered_by": "cron", "limit": "500"}
    while True:
        async with http.get(f"{url}/api/v1/runs", params=params) as response:
            page = await response.json()
        runs += page["runs"]
        if not page["pagination"]["has_more"]:
            return runs
        params["cursor"] = page["pagination"]["next_cursor"]


async def _fire_lags(ctx: Context, jobs: int, window_s: int, tag: str = "") -> tuple[list[int], dict[str, Any]]:
    """The fire lags (ms) of `jobs` jobs all due every second, over `window_s` seconds."""
    config = {f"every-second-{i:03d}": noop_job(schedule="* * * * * *") for i in range(jobs)}
    async with ctx.jobd(config, concurrency=jobs, tag=tag) as jobd, aiohttp.ClientSession() as http:
        started_ms = time.time_ns() // 1_000_000
        await asyncio.sleep(window_s + 1.0)
        ended_ms = started_ms + window_s * 1000
        runs = [
            run
            for run in await _cron_runs(http, jobd.url)
            if started_ms < parse_iso_ms(run["scheduled_for"]) <= ended_ms and run["started_at"]
        ]
        warnings = jobd.warnings()
    lags = [parse_iso_ms(run["started_at"]) - parse_iso_ms(run["scheduled_for"]) for run in runs]
    created = [parse_iso_ms(run["created_at"]) - parse_iso_ms(run["scheduled_for"]) for run in runs]
    expected = jobs * window_s
    notes = {
        "jobs": jobs,
        "window_s": window_s,
        "fires": len(runs),
        "fires_expected": expected,
        "max_ms": max(lags, default=None),
        "scheduled_to_created_ms": {"p50": percentile(created, 50), "p99": percentile(created, 99)},
        "daemon_warnings": warnings[:5],
    }
    if len(runs) < expected * 0.95:
        raise RuntimeError(f"only {len(runs)} of {expected} fires ran")
    return lags, notes


async def fire_lag(ctx: Context) -> list[Figure]:
    lags, notes = await _fire_lags(ctx, ctx.size(200, 20), ctx.size(30, 5))
    return [
        Figure("fire_lag_p50_ms", "cron fire lag, free workers, p50", "ms", [percentile(lags, 50)], notes=notes),
        Figure("fire_lag_p99_ms", "cron fire lag, free workers, p99", "ms", [percentile(lags, 99)], at_most(5)),
    ]


async def fire_lag_one(ctx: Context) -> list[Figure]:
    """The same for one job alone: the scheduler's timing without 199 other runs before it."""
    lags, notes = await _fire_lags(ctx, 1, ctx.size(20, 5), tag="one")
    return [
        Figure("fire_lag_one_p50_ms", "cron fire lag, one job alone, p50", "ms", [percentile(lags, 50)], notes=notes),
        Figure("fire_lag_one_p99_ms", "cron fire lag, one job alone, p99", "ms", [percentile(lags, 99)]),
    ]


async def idle_cpu(ctx: Context) -> list[Figure]:
    jobs = ctx.size(10_000, 1_000)
    streams = ctx.size(1_000, 100)
    window_s = ctx.size(30, 5)
    raise_open_files_limit(streams + 1024)
    minute = (datetime.now(UTC).minute + 30) % 60
    config = {f"hourly-{i:05d}": noop_job(schedule=f"{minute} * * * *") for i in range(jobs)}
    async with ctx.jobd(config) as jobd, HolderGroup(jobd.url, "/api/v1/events", streams):
        await asyncio.sleep(2.0)  # start-up and the streams' openings are behind us
        cpu, started = jobd.cpu_s(), time.monotonic()
        await asyncio.sleep(window_s)
        used, elapsed = jobd.cpu_s() - cpu, time.monotonic() - started
        rss = jobd.rss_bytes()
        warnings = jobd.warnings()
    notes = {
        "jobs": jobs,
        "streams": streams,
        "window_s": window_s,
        "cpu_s": round(used, 3),
        "rss_mb": round(rss / 1e6, 1),
        "startup_s": round(jobd.startup_s, 2),
        "daemon_warnings": warnings[:5],
    }
    return [
        Figure(
            "idle_cpu_pct",
            f"idle CPU, {jobs:,} hourly jobs + {streams:,} streams",
            "%",
            [used / elapsed * 100],
            at_most(1),
            notes=notes,
        )
    ]
