"""The benchmark suite runs end to end (quick mode, a few scenarios), so it cannot rot unnoticed.

No timing is asserted: the figures depend on the machine. What is asserted is that the suite
drives a real daemon through the scenarios, prints its table and writes every figure. The
cluster scenarios need PostgreSQL: skipped without it, as the tests of tests/postgres.py are
(a failure under CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.postgres import why_unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_and_reports(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "throughput,fanout", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HTTP-triggered no-op runs to COMPLETED" in done.stdout
    assert "(quick)" in done.stdout  # quick figures are never judged against the targets
    results = json.loads(output.read_text())
    assert results["mode"] == "quick"
    assert results["machine"]["cores"] >= 1 and results["machine"]["sqlite"]
    figures = {figure["key"]: figure for figure in results["figures"]}
    assert figures["http_noop_runs_per_s"]["value"] > 0
    assert figures["http_noop_runs_per_s"]["notes"]["runs"] == 1_000
    delivery = [key for key in figures if key.startswith("fanout_") and key.endswith("_ms")]
    assert len(delivery) == 4 and all(figures[key]["value"] > 0 for key in delivery)
    assert figures["fanout_500_rss_kb"]["target"] == {"op": "<=", "value": 12}
    assert not results["failures"]


@pytest.mark.timeout(240)
def test_quick_cluster_bench_runs_and_reports(tmp_path: Path) -> None:
    """The cluster scenarios on their own throwaway PostgreSQL (or JOBD_BENCH_PG_DSN / JOBD_TEST_PG_DSN)."""
    reason = why_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    output = tmp_path / "results.json"
    scenarios = "cluster-3,cluster-latency,cluster-failover,cluster-cron"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", scenarios, "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cluster, 3 nodes: HTTP-triggered no-op runs" in done.stdout
    results = json.loads(output.read_text())
    assert not results["failures"]
    figures = {figure["key"]: figure for figure in results["figures"]}
    throughput = figures["cluster_3_runs_per_s"]
    assert throughput["value"] > 0 and throughput["target"] == {"op": ">=", "value": 2_000}
    assert throughput["verdict"] == "(quick)"
    assert throughput["notes"]["finished"] > 0
    assert sum(throughput["notes"]["runs_executed_per_node"].values()) >= throughput["notes"]["finished"] + 50
    assert figures["cluster_3_transactions_per_run"]["value"] > 0
    if results["postgresql"]["throwaway"]:  # its processes are ours to read, pg_stat_statements preloaded
        assert figures["cluster_3_pg_cpu_us_per_run"]["value"] > 0
        assert figures["cluster_3_statements_per_run"]["value"] > 0
        assert throughput["notes"]["top_statements_by_total_time"]
    for key in ("p50", "p99", "max"):
        assert figures[f"cluster_latency_completed_{key}_ms"]["value"] > 0
    failover = figures["cluster_failover_s"]
    assert failover["value"] > 0 and failover["notes"]["runs_on_the_killed_node"] > 0
    assert failover["target"] == {"op": "<=", "value": failover["notes"]["dead_after_s"] + 5}
    assert figures["cluster_fire_lag_p50_ms"]["notes"]["fires"] > 0
    assert {"cluster_fire_duplicates", "cluster_fire_misses"} <= set(figures)
