"""Scenario 4: one event to many idle firehose streams, and what each stream costs the daemon.

The streams are held by `bench.holder` processes (raw sockets, 5,000 per process) and filtered to
the PENDING updates of one job, so each trigger sends exactly one status_update to every stream
(the firehose's `summary` messages come on top, as they would). The clock starts when the trigger
is sent and stops when the last stream has the event; its PENDING update is published as soon as
the run is committed, so the figure also holds the commit, a millisecond or so.

RSS per stream is the daemon's resident memory with the streams open, less its memory before
they were opened (after a warm-up that opened and closed one), divided by their number.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.daemon import noop_job
from bench.holder import HolderGroup
from bench.report import Figure, at_most, percentile
from bench.scenarios import Context, own_cpu_s
from jobd.server import raise_open_files_limit

STREAM_PATH = "/api/v1/events?job=bench&status=PENDING"
KB = 1024


async def _one(ctx: Context, streams: int, events: int, figures: list[Figure], *, target: bool) -> None:
    async with (
        ctx.jobd({"bench": noop_job()}, tag=f"{streams}-streams", sections={"server": {"max_streams": 20_000}}) as jobd,
        aiohttp.ClientSession() as http,
    ):
        trigger = f"{jobd.url}/api/v1/jobs/bench/trigger"
        async with HolderGroup(jobd.url, STREAM_PATH, 1) as warmup:
            for _ in range(5):
                async with http.post(trigger, data=b"{}") as response:
                    run_id = (await response.json())["run"]["id"]
                await warmup.reached(run_id)
        await asyncio.sleep(0.5)
        before = jobd.rss_bytes()
        async with HolderGroup(jobd.url, STREAM_PATH, streams) as group:
            await asyncio.sleep(1.0)  # the opening summaries and snapshots are written
            during = jobd.rss_bytes()
            delivered, first = [], []
            cpu, own = jobd.cpu_s(), own_cpu_s()
            for _ in range(events):
                sent = time.monotonic()
                async with http.post(trigger, data=b"{}") as response:
                    run_id = (await response.json())["run"]["id"]
                earliest, last = await group.reached(run_id)
                delivered.append((last - sent) * 1000)
                first.append((earliest - sent) * 1000)
                await asyncio.sleep(0.1)
            daemon_cpu, loadgen_cpu = jobd.cpu_s() - cpu, own_cpu_s() - own
            open_s = group.open_s
            holders = len(group.counts)
        warnings = jobd.warnings()
    per_stream = (during - before) / streams / KB
    notes = {
        "streams": streams,
        "events": events,
        "holder_processes": holders,
        "open_s": open_s,
        "first_stream_ms_p50": round(percentile(first, 50), 2),
        "rss_before_mb": round(before / 1e6, 1),
        "rss_with_streams_mb": round(during / 1e6, 1),
        "daemon_cpu_s": round(daemon_cpu, 2),
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        "daemon_warnings": warnings[:5],
    }
    label = f"{streams:,}"
    figures += [
        Figure(
            f"fanout_{streams}_p50_ms",
            f"one event to {label} streams, p50",
            "ms",
            [percentile(delivered, 50)],
            notes=notes,
        ),
        Figure(
            f"fanout_{streams}_p99_ms",
            f"one event to {label} streams, p99",
            "ms",
            [percentile(delivered, 99)],
            at_most(250) if target else None,
        ),
        Figure(
            f"fanout_{streams}_rss_kb",
            f"daemon RSS per stream, {label} streams",
            "KB",
            [per_stream],
            at_most(12) if target else None,
        ),
    ]


async def fanout(ctx: Context) -> list[Figure]:
    raise_open_files_limit(ctx.size(10_000, 500) + 1024)
    events = ctx.size(20, 5)
    figures: list[Figure] = []
    await _one(ctx, ctx.size(1_000, 100), events, figures, target=False)
    await _one(ctx, ctx.size(10_000, 500), events, figures, target=True)
    return figures
