"""Operating a cluster of real `jobd serve` processes on one PostgreSQL: `jobd status` listing the
nodes, any node answering for any run's log, and alerts sent once for the cluster's failure streak."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster_processes import nodes

pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")

JOBS = (
    '[jobs.talk]\nhandler = "ops_jobs:talk"\nmax_concurrency = 8\noverlap = "allow"\n'
    '[jobs.fail]\nhandler = "ops_jobs:fail"\nmax_concurrency = 8\noverlap = "allow"\nalert_after_failures = 3\n'
)


async def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBD_URL": url}
    env.pop("JOBD_TOKEN", None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jobd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


async def test_status_lists_the_nodes_of_the_cluster(tmp_path: Path, pg_db: str) -> None:
    async with nodes(tmp_path, pg_db, 2, JOBS) as daemons:
        shown = await cli(daemons[1].url, "status")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("workers 0/16 busy")
        assert lines[1].split() == ["NODE", "HOST", "PID", "ALIVE", "RUNNING", "HEARTBEAT"]
        rows = [line.split() for line in lines[2:4]]
        pids = {d.proc.pid for d in daemons if d.proc is not None}
        assert [row[0] for row in rows] == ["node0", "node1"]
        assert {int(row[2]) for row in rows} == pids
        assert [row[3:5] for row in rows] == [["yes", "0"], ["yes", "0"]]
        assert all(row[6] == "ago" and float(row[5][:-1]) < 3 for row in rows)
        assert lines[4] == "" and lines[5].split()[0] == "JOB"
        snapshot = json.loads((await cli(daemons[0].url, "status", "--json")).stdout)
        assert set(snapshot) == {"queue", "jobs", "nodes"}
        listed = {n["name"]: n for n in snapshot["nodes"]}
        assert listed.keys() == {"node0", "node1"} and all(n["alive"] for n in listed.values())
        assert listed["node1"]["url"] == daemons[1].url
