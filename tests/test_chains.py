"""Chains end to end on both backends: a run's end triggers its job's on_success, on_failure,
on_finish (docs/chains.md), committed with the parent's end, shown by the API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sched_jobs
from conftest import BACKENDS, Harness, wait_for
from ssehelp import SSEReader
from test_lifecycle import TERMINAL, Api, daemons, no_tracebacks, stored_runs, write_config  # noqa: F401

from jobd.config import ConfigError

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

StartDaemon = Callable[..., Awaitable[Harness]]
NOOP = {"handler": "sample_jobs:noop"}
JOBS: dict[str, Any] = {
    "extract": {**NOOP, "on_success": ["load"], "on_failure": ["alert"], "on_finish": ["cleanup"]},
    "broken": {"handler": "sample_jobs:fails", "on_success": ["load"], "on_failure": ["alert"]},
    "partly": {"handler": "sample_jobs:partial", "on_success": ["load"], "on_failure": ["alert"]},
    "strict": {
        "handler": "sample_jobs:partial",
        "on_success": ["load"],
        "on_failure": ["alert"],
        "chain_partial_as": "failure",
    },
    "load": {**NOOP, "chain_params": {"target": "warehouse", "batch": 3}},
    "alert": NOOP,
    "cleanup": NOOP,
}


async def run_json(h: Harness, run_id: int) -> dict[str, Any]:
    data = await h.get_json(f"/api/v1/runs/{run_id}")
    run: dict[str, Any] = data["run"]
    return run


async def ended_with_children(h: Harness, run_id: int) -> dict[str, Any]:
    """The parent once its end is committed, and each child it made once that has ended too."""
    await h.finished(run_id)
    parent = await run_json(h, run_id)
    for child in parent["children"]:
        if child["id"] is not None:
            await h.finished(child["id"])
    return await run_json(h, run_id)


async def test_success_failure_and_finish_chains(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    extract = await h.trigger("extract", {"day": "2026-12-07"})
    parent = await ended_with_children(h, extract["id"])
    assert parent["status"] == "COMPLETED" and parent["parent_run_id"] is None
    assert [(c["job"], c["status"]) for c in parent["children"]] == [("load", "COMPLETED"), ("cleanup", "COMPLETED")]
    load = await run_json(h, parent["children"][0]["id"])
    assert load["triggered_by"] == "chain" and load["parent_run_id"] == extract["id"]
    # {"parent": ...} with the child's own chain_params merged over it.
    assert load["params"] == {
        "parent": {
            "id": extract["id"],
            "job": "extract",
            "status": "COMPLETED",
            "result": {"echo": {"day": "2026-12-07"}},
        },
        "target": "warehouse",
        "batch": 3,
    }
    assert load["children"] == []

    broken = await h.trigger("broken")
    failed = await ended_with_children(h, broken["id"])
    assert failed["status"] == "FAILED"
    assert [(c["job"], c["status"]) for c in failed["children"]] == [("alert", "COMPLETED")]
    alert = await run_json(h, failed["children"][0]["id"])
    assert alert["params"]["parent"]["status"] == "FAILED" and alert["params"]["parent"]["result"] is None

    listed = await h.get_json(f"/api/v1/runs?parent={extract['id']}")
    assert sorted(run["job"] for run in listed["runs"]) == ["cleanup", "load"]
    assert listed["pagination"]["total"] == 2
    chained = await h.get_json("/api/v1/runs?triggered_by=chain")
    assert chained["pagination"]["total"] == 3


async def test_the_firehose_announces_a_child_with_its_parent(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    response = await h.client.get("/api/v1/events", timeout=aiohttp.ClientTimeout(total=None))
    assert response.status == 200
    stream = SSEReader(response)
    await stream.until(lambda m: m.type == "connected")
    extract = await h.trigger("extract")
    seen = await stream.until(lambda m: m.type == "status_update" and m.data["job"] == "load")
    parent_end = [m.data for m in seen if m.type == "status_update" and m.data["run_id"] == extract["id"]][-1]
    child = seen[-1].data
    assert parent_end["status"] == "COMPLETED" and parent_end["parent_run_id"] is None
    assert child["status"] == "PENDING" and child["parent_run_id"] == extract["id"]
    response.close()


async def test_partial_counts_as_success_unless_chain_partial_as_failure(start_daemon: StartDaemon) -> None:
    h = await start_daemon(JOBS)
    partly = await ended_with_children(h, (await h.trigger("partly"))["id"])
    assert partly["status"] == "PARTIAL"
    assert [c["job"] for c in partly["children"]] == ["load"]
    strict = await ended_with_children(h, (await h.trigger("strict"))["id"])
    assert strict["status"] == "PARTIAL"
    assert [c["job"] for c in strict["children"]] == ["alert"]


async def test_a_child_its_overlap_policy_refuses_is_recorded_as_skipped(start_daemon: StartDaemon) -> None:
    h = await start_daemon(
        {"gate": {"handler": "sched_jobs:gated"}, "first": {**NOOP, "on_success": ["gate", "after"]}, "after": NOOP}
    )
    gate = await h.trigger("gate")  # overlap = "skip": a second run is refused while it runs
    await wait_for(lambda: sched_jobs.releases.get(gate["id"]))
    first = await ended_with_children(h, (await h.trigger("first"))["id"])
    skipped, made = first["children"]
    assert skipped == {
        "id": None,
        "job": "gate",
        "status": "skipped",
        "reason": f"job 'gate' already has run {gate['id']} PROCESSING",
    }
    assert made["job"] == "after" and made["status"] == "COMPLETED"
    sched_jobs.releases[gate["id"]].set()
    assert (await h.finished(gate["id"])).status.value == "COMPLETED"
    listed = await h.get_json("/api/v1/runs?job=gate")
    assert listed["pagination"]["total"] == 1


async def test_max_chain_depth_stops_a_chain_at_run_time(start_daemon: StartDaemon) -> None:
    h = await start_daemon(
        {
            "one": {**NOOP, "on_success": ["two"]},
            "two": {**NOOP, "on_success": ["three"], "max_chain_depth": 1},
            "three": NOOP,
        }
    )
    one = await ended_with_children(h, (await h.trigger("one"))["id"])
    two_id = one["children"][0]["id"]
    two = await ended_with_children(h, two_id)
    assert two["parent_run_id"] == one["id"]
    assert two["children"] == [
        {
            "id": None,
            "job": "three",
            "status": "skipped",
            "reason": f"max_chain_depth reached: run {two_id} already has 1 ancestors",
        }
    ]


async def test_a_cycle_or_an_unknown_job_is_refused_at_load(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"^jobs\.a\.on_success: chain cycle a → b → a$"):
        make_config({"a": {**NOOP, "on_success": ["b"]}, "b": {**NOOP, "on_failure": ["a"]}})
    with pytest.raises(ConfigError, match=r"^jobs\.a\.on_finish: chain cycle a → a$"):
        make_config({"a": {**NOOP, "on_finish": ["a"]}})
    with pytest.raises(ConfigError, match=r"^jobs\.a\.on_failure: no job named 'nope'$"):
        make_config({"a": {**NOOP, "on_failure": ["nope"]}})
    with pytest.raises(ConfigError, match=r"^jobs\.a\.chain_partial_as: 'maybe' is not one of success, failure$"):
        make_config({"a": {**NOOP, "chain_partial_as": "maybe"}})
    with pytest.raises(ConfigError, match=r"^jobs\.a\.chain_params\.parent: reserved"):
        make_config({"a": {**NOOP, "chain_params": {"parent": 1}}})


# -- a crash between a parent's end and its children -------------------------------------------------


async def test_sigkill_mid_chain_loses_no_child_and_makes_none_twice(
    tmp_path: Path, daemons: Any, store_toml: str
) -> None:
    """Parents end while a real `jobd serve` is killed: whatever the moment, every parent the store
    holds as ended has its child in the same store, and after the restart each ended parent
    (one not retried) has exactly one child."""
    config = write_config(
        tmp_path / "jobd.toml",
        store=store_toml,
        workers="concurrency = 8\nshutdown_grace_s = 2\nkill_grace_s = 0.5",
        jobs="""
[jobs.step]
shell = "sleep 0.05"
overlap = "allow"
max_concurrency = 6
on_finish = ["after"]
[jobs.after]
shell = "sleep 0.1"
overlap = "allow"
max_concurrency = 2
""",
    )
    first = daemons(config)
    url = await first.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        batch = await api.trigger("step", runs=[{"params": {"i": i}} for i in range(40)])
        steps = {run["id"] for run in batch["runs"]}

        async def mid_load() -> bool:
            queue = await api.get("/api/v1/queue")
            return bool(queue["counts"]["COMPLETED"] >= 8)

        await wait_for(mid_load, timeout=30, interval=0.01)
        await first.kill()

    def check_chains(runs: dict[int, Any]) -> list[int]:
        """Every ended parent that no retry repeats has exactly one child; returns them."""
        children: dict[int, list[Any]] = {}
        for run in runs.values():
            if run["parent_run_id"] is not None and run["retry_of"] is None:
                children.setdefault(run["parent_run_id"], []).append(run)
        retried = {run["retry_of"] for run in runs.values() if run["retry_of"] is not None}
        ended = [run["id"] for run in runs.values() if run["job"] == "step" and run["status"] in TERMINAL]
        for parent_id in ended:
            expected = 0 if parent_id in retried else 1
            assert len(children.get(parent_id, [])) == expected, (parent_id, children.get(parent_id))
        assert set(children) <= set(ended)
        for made in children.values():
            assert [run["job"] for run in made] == ["after"] and made[0]["triggered_by"] == "chain"
        return ended

    left = stored_runs(config)
    assert steps <= set(left)
    ended_before = check_chains(left)
    assert ended_before and any(run["status"] in ("PENDING", "PROCESSING") for run in left.values())

    second = daemons(config)
    url = await second.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)

        async def idle() -> bool:
            queue = await api.get("/api/v1/queue")
            return bool(queue["pending"] == 0 and queue["processing"] == 0)

        await wait_for(idle, timeout=60, interval=0.05)
        assert await second.stop() == 0
    no_tracebacks(second)
    runs = stored_runs(config)
    assert {run["status"] for run in runs.values()} <= TERMINAL
    ended = check_chains(runs)
    assert set(ended_before) <= set(ended)
    # Every step ran to an end that no retry repeats, and each such end made its child.
    retried = {run["retry_of"] for run in runs.values() if run["retry_of"] is not None}
    final_steps = [run_id for run_id in ended if run_id not in retried]
    assert len(final_steps) == 40


async def test_retries_cancels_and_a_replacing_child(start_daemon: StartDaemon) -> None:
    h = await start_daemon(
        {
            "flaky": {
                "handler": "sample_jobs:fails",
                "retries": 1,
                "retry_backoff_s": 0.01,
                "on_failure": ["alert"],
                "on_finish": ["cleanup"],
            },
            "slow": {"handler": "sched_jobs:gated", "on_failure": ["alert"], "on_finish": ["cleanup"]},
            "first": {**NOOP, "on_success": ["swap"]},
            "swap": {"handler": "sched_jobs:gated", "overlap": "replace"},
            "alert": {**NOOP, "overlap": "allow"},
            "cleanup": {**NOOP, "overlap": "allow"},
        }
    )
    # A failed attempt that is retried triggers nothing; the last attempt triggers the chain.
    flaky = await h.trigger("flaky")
    first_attempt = await ended_with_children(h, flaky["id"])
    assert first_attempt["status"] == "FAILED" and first_attempt["children"] == []
    retried = await h.get_json("/api/v1/runs?job=flaky&triggered_by=retry")
    [again] = retried["runs"]
    last = await ended_with_children(h, again["id"])
    assert [(c["job"], c["status"]) for c in last["children"]] == [("alert", "COMPLETED"), ("cleanup", "COMPLETED")]
    assert (await run_json(h, last["children"][0]["id"]))["params"]["parent"]["id"] == again["id"]

    # CANCELLED is neither a success nor a failure: only on_finish.
    slow = await h.trigger("slow")
    await wait_for(lambda: sched_jobs.releases.get(slow["id"]))
    response = await h.client.post(f"/api/v1/runs/{slow['id']}/cancel")
    assert response.status == 200, await response.text()
    cancelled = await ended_with_children(h, slow["id"])
    assert cancelled["status"] == "CANCELLED"
    assert [c["job"] for c in cancelled["children"]] == ["cleanup"]

    # A child whose job replaces: the run it replaces is cancelled, the child is made.
    old = await h.trigger("swap")
    await wait_for(lambda: sched_jobs.releases.get(old["id"]))
    first = await h.trigger("first")
    await h.finished(first["id"])
    [child] = (await run_json(h, first["id"]))["children"]
    replaced = await h.finished(old["id"])
    assert replaced.status.value == "CANCELLED" and replaced.error == "replaced by a newer run of 'swap'"
    await wait_for(lambda: sched_jobs.releases.get(child["id"]))
    sched_jobs.releases[child["id"]].set()
    assert (await h.finished(child["id"])).status.value == "COMPLETED"
