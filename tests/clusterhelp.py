"""Helpers of the cluster tests: 3 real `jobd serve` nodes on the module's PostgreSQL, the
executions their handlers record (tests/cluster_jobs.py), and the database read back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from conftest import pg_url
from process import DaemonProcess

JOBS = (
    '[jobs.noop]\nhandler = "cluster_jobs:record"\nmax_concurrency = 64\noverlap = "allow"\n'
    '[jobs.sleepy]\nhandler = "cluster_jobs:record_then_sleep"\nmax_concurrency = 8\noverlap = "allow"\non_interrupt = "retry"\n'
)
TERMINAL = ("COMPLETED", "PARTIAL", "FAILED", "CANCELLED")


def node_config(tmp_path: Path, dsn: str, name: str, extra: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    config = folder / "jobd.toml"
    config.write_text(
        f'[server]\nport = 0\n[store]\nurl = "{pg_url(dsn)}"\n[workers]\nconcurrency = 16\n'
        f'[cluster]\nnode_name = "{name}"\nheartbeat_s = 0.5\ndead_after_s = 3\n{JOBS}{extra}'
    )
    return config


@contextlib.asynccontextmanager
async def nodes(tmp_path: Path, dsn: str, count: int, extra: str = "") -> AsyncIterator[list[DaemonProcess]]:
    """`count` nodes named node0, node1, ...; each records its executions in executions.txt."""
    out = tmp_path / "executions.txt"
    tests_dir = str(Path(__file__).resolve().parent)
    env = {"CLUSTER_OUT": str(out), "PYTHONPATH": tests_dir}
    daemons = [DaemonProcess(node_config(tmp_path, dsn, f"node{i}", extra), env=env) for i in range(count)]
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        yield daemons
    finally:
        for daemon in daemons:
            await daemon.cleanup()


def executions(tmp_path: Path) -> list[tuple[int, int]]:
    """(run id, pid of the node) of every execution of a recording handler, in order."""
    path = tmp_path / "executions.txt"
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def statuses(dsn: str) -> dict[str, int]:
    return {str(status): int(n) for status, n in query(dsn, "SELECT status, count(*) FROM runs GROUP BY status")}


def unfinished(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM runs WHERE status IN ('PENDING', 'PROCESSING')")[0][0])


async def trigger(session: aiohttp.ClientSession, url: str, job: str, runs: int, params: Any = None) -> list[int]:
    body = {"runs": [{"params": params or {}} for _ in range(runs)]}
    async with session.post(f"{url}/api/v1/jobs/{job}/trigger", json=body) as resp:
        assert resp.status == 202, await resp.text()
        data = await resp.json()
    return [run["id"] for run in data["runs"]] if "runs" in data else [data["id"]]
