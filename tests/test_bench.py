"""The benchmark suite runs end to end (quick mode, a few scenarios), so it cannot rot unnoticed.

No timing is asserted: the figures depend on the machine. What is asserted is that the suite
drives a real daemon through the scenarios, prints its table and writes every figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
