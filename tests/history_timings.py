"""Timings of the history endpoints on a large store (not a test: run it by hand).

    python tests/history_timings.py --runs 1000000 --days 365 --db /tmp/jobd-1m/jobd.db

Fills the store (once: an existing file is reused) with generated runs through the store's writer,
then starts a real daemon on it and times, over HTTP on loopback, start-up, GET /api/v1/runs pages
and GET /api/v1/stats. Prints one line per figure: median and max of the repetitions, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from rungen import generate_runs, insert_runs  # noqa: E402

from jobd.app import Daemon  # noqa: E402
from jobd.config import parse_config  # noqa: E402
from jobd.models import now_ms  # noqa: E402
from jobd.store import SQLiteStore  # noqa: E402
from jobd.web import create_app  # noqa: E402
from jobd.web.routes.runs import encode_cursor  # noqa: E402

JOBS = tuple(f"job{i}" for i in range(20))


async def fill(path: Path, count: int, days: int) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        started = time.perf_counter()
        runs = generate_runs(count * 21 // 20, now_ms=now_ms(), days=days, jobs=JOBS, seed=1)
        runs = [run for run in runs if run.status.terminal][-count:]  # finished ones, as after a clean stop
        made = time.perf_counter()
        await insert_runs(store, runs)
        print(f"generated {len(runs)} runs in {made - started:.1f} s, written in {time.perf_counter() - made:.1f} s")
    finally:
        await store.close()


async def timed(http: aiohttp.ClientSession, url: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            assert response.status == 200, (url, response.status, await response.text())
        times.append((time.perf_counter() - started) * 1000)
    return times


async def measure(path: Path, repeat: int) -> None:
    config = parse_config(
        {"store": {"path": str(path)}, "jobs": {name: {"command": ["true"]} for name in JOBS}}, environ={}
    )
    daemon = Daemon(config, environ={})
    runner = web.AppRunner(create_app(daemon), access_log=None)
    started = time.perf_counter()
    await runner.setup()
    print(f"{'start (store open, migrations, run table load)':58s} {(time.perf_counter() - started) * 1000:8.1f} ms")
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/runs?limit=1") as response:
                first_id = (await response.json())["runs"][0]["id"]
            cursor_page = f"{base}/runs?limit=50&cursor={encode_cursor(first_id // 2)}"
            for label, url in (
                ("GET /runs (limit 50)", f"{base}/runs"),
                ("GET /runs?job=job3", f"{base}/runs?job=job3"),
                ("GET /runs?status=FAILED", f"{base}/runs?status=FAILED"),
                ("GET /runs?job=job3&status=FAILED,PARTIAL", f"{base}/runs?job=job3&status=FAILED,PARTIAL"),
                ("GET /runs?cursor=<half way down>", cursor_page),
                ("GET /runs?offset=500000", f"{base}/runs?offset=500000"),
                (
                    "GET /runs?since=<7 days ago> (no rollup: scans)",
                    f"{base}/runs?since={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - 7 * 86400))}",
                ),
                ("GET /stats?days=30", f"{base}/stats?days=30"),
                ("GET /stats?days=30&job=job3", f"{base}/stats?days=30&job=job3"),
                ("GET /stats?days=366", f"{base}/stats?days=366"),
            ):
                times = await timed(http, url, repeat)
                print(f"{label:58s} {statistics.median(times):8.1f} ms median, {max(times):8.1f} ms max")
    finally:
        await runner.cleanup()


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and worse only
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365, help="spread the runs' creation over this many days")
    parser.add_argument("--db", type=Path, default=Path("/tmp/jobd-history/jobd.db"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not args.db.exists():
        await fill(args.db, args.runs, args.days)
    await measure(args.db, args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
