"""The scenarios of the suite, each an async function of a `Context` returning its figures.

Every scenario starts its own daemon(s) in a fresh folder, so none inherits another's store,
memory or warm caches, and each warms up (a few runs, a stream) before it measures.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from bench.daemon import JobdProcess
from bench.postgres import BenchPostgres
from bench.report import Figure


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    quick: bool
    workdir: Path
    name: str = "scenario"
    profile_dir: Path | None = None  # --profile: py-spy output goes here
    log_level: str = "warning"
    synchronous: str = "normal"  # store.synchronous of every daemon
    postgres: BenchPostgres | None = None  # the run's PostgreSQL, for the cluster scenarios

    def size(self, full: float, quick: float) -> Any:
        """The workload: `full` as the issue asks, `quick` for a smoke run only."""
        return quick if self.quick else full

    def jobd(self, jobs: Mapping[str, Mapping[str, Any]], *, tag: str = "", **options: Any) -> JobdProcess:
        """The daemon under test, in its own folder (and profiled with --profile)."""
        name = f"{self.name}-{tag}" if tag else self.name
        profile = self.profile_dir / f"{name}.txt" if self.profile_dir is not None else None
        sections = dict(options.pop("sections", {}))
        if "url" not in sections.get("store", {}):  # PostgreSQL decides its own durability
            sections["store"] = {"synchronous": self.synchronous, **sections.get("store", {})}
        return JobdProcess(
            self.workdir / (tag or "jobd"),
            jobs,
            profile=profile,
            log_level=self.log_level,
            sections=sections,
            **options,
        )


Scenario = Callable[[Context], Awaitable[list[Figure]]]


def own_cpu_s() -> float:
    """CPU seconds this process (the load generator) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def registry() -> dict[str, tuple[str, Scenario]]:
    from bench.scenarios import cluster, fanout, history, latency, scheduling, throughput

    return {
        "throughput": ("1. 10,000 HTTP-triggered no-op runs (Python handler), 64 clients", throughput.python_handler),
        "throughput-command": ("1. the same with a subprocess handler (`true`)", throughput.command),
        "batch": ("2. 10,000 runs in batch triggers of 1,000", throughput.batch),
        "latency": ("3. trigger → PROCESSING / COMPLETED on an idle daemon, 500 sequential runs", latency.idle),
        "fanout": ("4. one event to 1,000 and 10,000 idle firehose streams", fanout.fanout),
        "scheduler": ("5. fire lag of 200 jobs on a seconds schedule, 30 s", scheduling.fire_lag),
        "scheduler-one": ("5. fire lag of one job alone on a seconds schedule, 20 s", scheduling.fire_lag_one),
        "idle": ("5. idle CPU with 10,000 hourly jobs and 1,000 idle streams, 30 s", scheduling.idle_cpu),
        "history": ("6. GET /runs, GET /stats, start-up with 1,000,000 runs and 10,000 jobs", history.history),
        "cluster-1": (
            "7. cluster: 10,000 HTTP-triggered no-op runs (240 s at most), 64 clients, 1 node on PostgreSQL",
            cluster.one_node,
        ),
        "cluster-2": ("7. the same with 2 nodes (clients spread round-robin)", cluster.two_nodes),
        "cluster-3": ("7. the same with 3 nodes, and where the time goes (CPU, statements)", cluster.three_nodes),
        "cluster-batch": ("7. 10,000 runs in batch triggers of 1,000 on 3 nodes", cluster.batch),
        "cluster-latency": ("8. trigger → COMPLETED on an idle 3-node cluster, 1,000 sequential runs", cluster.latency),
        "cluster-failover": ("9. SIGKILL of a node → its runs running on another", cluster.failover),
        "cluster-cron": (
            "10. fire lag of 50 seconds-schedule jobs on 3 nodes, 30 s, duplicates, misses",
            cluster.cron,
        ),
    }
