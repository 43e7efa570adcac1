"""Scenario 6: a long history. 1,000,000 finished runs of 10,000 hourly jobs over 30 days.

The store is generated first (bench.history_store). Start-up is timed from spawning `jobd serve`
to its READY=1 (what systemd waits for), three times; it includes the interpreter starting and
importing jobd, timed on its own as a note. Then the two history reads are timed over HTTP: the
default first page of GET /api/v1/runs and GET /api/v1/stats?days=30 (which covers every run).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import aiohttp

from bench.daemon import REPO, noop_job
from bench.history_store import build
from bench.report import Figure, at_most, percentile
from bench.scenarios import Context
from jobd.models import now_ms


async def _timed_get(http: aiohttp.ClientSession, url: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status}")
        times.append((time.perf_counter() - started) * 1000)
    return times


def _import_s() -> float:
    """How long a bare interpreter takes to start and import what `jobd serve` imports."""
    code = "import jobd.cli, jobd.server, jobd.app, jobd.web, jobd.logs"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - started


async def history(ctx: Context) -> list[Figure]:
    runs = ctx.size(1_000_000, 20_000)
    job_count = ctx.size(10_000, 500)
    starts = ctx.size(3, 1)
    names = [f"job{i:05d}" for i in range(job_count)]
    jobd = ctx.jobd({name: noop_job(schedule="H * * * *") for name in names})
    made = build(jobd.store_path, runs=runs, jobs=names, days=30, now_ms=now_ms())
    startups = []
    for attempt in range(starts):
        startups.append(await jobd.start())
        if attempt < starts - 1:
            await jobd.stop()
    try:
        async with aiohttp.ClientSession() as http:
            page = await _timed_get(http, f"{jobd.url}/api/v1/runs", ctx.size(20, 5))
            stats = await _timed_get(http, f"{jobd.url}/api/v1/stats?days=30", ctx.size(10, 3))
    finally:
        await jobd.stop()
    warnings = jobd.warnings()
    notes = {
        "runs": runs,
        "jobs": job_count,
        "store": made,
        "startup_samples_s": [round(s, 3) for s in startups],
        "interpreter_and_imports_s": round(statistics.median(_import_s() for _ in range(3)), 3),
        "runs_page_max_ms": round(max(page), 1),
        "stats_max_ms": round(max(stats), 1),
        "daemon_warnings": warnings[:5],
    }
    return [
        Figure(
            "runs_page_ms",
            f"GET /runs page, {runs:,} runs, p50",
            "ms",
            [percentile(page, 50)],
            at_most(50),
            notes=notes,
        ),
        Figure("stats_30d_ms", f"GET /stats?days=30, {runs:,} runs, p50", "ms", [percentile(stats, 50)], at_most(300)),
        Figure(
            "startup_s",
            f"start to ready, {runs:,} runs + {job_count:,} jobs",
            "s",
            [statistics.median(startups)],
            at_most(1),
        ),
    ]
