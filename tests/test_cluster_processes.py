"""Cluster mode with real `jobd serve` processes on one PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from conftest import wait_for
from process import DaemonProcess
from psycopg.conninfo import conninfo_to_dict

# The node's reads of the history (jobd.store.postgres.store) are built beside this backend.
pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")


JOBS = (
    '[jobs.noop]\nhandler = "cluster_jobs:record"\nmax_concurrency = 64\noverlap = "allow"\n'
    '[jobs.sleepy]\nhandler = "cluster_jobs:record_then_sleep"\nmax_concurrency = 8\noverlap = "allow"\n'
)


def as_url(dsn: str) -> str:
    """The fixture's keyword DSN as the URL [store] url takes."""
    info = conninfo_to_dict(dsn)
    return f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"


def node_config(tmp_path: Path, dsn: str, name: str, extra: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    config = folder / "jobd.toml"
    config.write_text(
        f'[server]\nport = 0\n[store]\nurl = "{as_url(dsn)}"\n[workers]\nconcurrency = 16\n'
        f'[cluster]\nnode_name = "{name}"\nheartbeat_s = 0.5\ndead_after_s = 3\n{JOBS}{extra}'
    )
    return config


@contextlib.asynccontextmanager
async def nodes(tmp_path: Path, dsn: str, count: int, extra: str = "") -> AsyncIterator[list[DaemonProcess]]:
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
    path = tmp_path / "executions.txt"
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def statuses(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())


async def trigger(session: aiohttp.ClientSession, url: str, job: str, runs: int, params: Any = None) -> list[int]:
    body = {"runs": [{"params": params or {}} for _ in range(runs)]}
    async with session.post(f"{url}/api/v1/jobs/{job}/trigger", json=body) as resp:
        assert resp.status == 202, await resp.text()
        data = await resp.json()
    return [run["id"] for run in data["runs"]] if "runs" in data else [data["id"]]


async def test_runs_triggered_across_three_nodes_each_execute_exactly_once(tmp_path, pg_dsn):
    total = 3000
    async with nodes(tmp_path, pg_dsn, 3) as daemons, aiohttp.ClientSession() as session:
        ids: list[int] = []
        for i in range(total // 100):
            ids += await trigger(session, daemons[i % 3].url, "noop", 100)
        assert len(set(ids)) == total
        await wait_for(lambda: statuses(pg_dsn).get("COMPLETED", 0) == total, timeout=120, interval=0.5)
        done = executions(tmp_path)
        per_run = collections.Counter(run_id for run_id, _ in done)
        assert sorted(per_run) == sorted(ids)
        assert set(per_run.values()) == {1}, [r for r, n in per_run.items() if n > 1][:10]
        pids = {pid for _, pid in done}
        assert len(pids) == 3, "every node executed some runs"
        assert statuses(pg_dsn) == {"COMPLETED": total}
