"""Shared concurrency groups against a real daemon on both backends: limits under contention with
overlapping groups (all runs finish), the queue and the metrics, a reload, config errors; and the
cluster's claim under concurrent claimers, observed in the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, wait_for
from group_jobs import Seen
from test_metrics import scrape, value
from test_run_at import jobd_cli

from jobd.config import ConfigError, parse_config
from jobd.models import Run, RunStatus, TriggerSource, now_ms
from jobd.store.postgres import connect
from jobd.store.postgres.runs import ClaimGroups, Conn, claim, finish_many, insert_runs, next_run_ids

both = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

COUNTED = {"handler": "group_jobs:counted", "overlap": "allow", "max_concurrency": 10}
GATED = {"handler": "group_jobs:gated", "overlap": "allow", "max_concurrency": 10}
GROUPS = {"a": {"max_concurrency": 2}, "b": {"max_concurrency": 1}, "c": {"max_concurrency": 3}}
# Overlapping memberships: a run of jab needs a slot of a and of b at once, and so on round.
MEMBERS = {"ja": ["a"], "jab": ["a", "b"], "jbc": ["b", "c"], "jc": ["c"], "jca": ["c", "a"]}


@pytest.fixture(autouse=True)
def seen() -> Iterator[type[Seen]]:
    Seen.clear()
    yield Seen
    Seen.clear()


async def trigger_batch(h: Any, job: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = await h.client.post(f"/api/v1/jobs/{job}/trigger", json={"runs": items})
    body = await response.json()
    assert response.status == 202, body
    return list(body["runs"])


@both
async def test_overlapping_groups_never_run_over_their_limits_and_every_run_finishes(start_daemon):
    jobs = {name: {**COUNTED, "groups": groups} for name, groups in MEMBERS.items()}
    h = await start_daemon(jobs, groups=GROUPS, workers={"concurrency": 8})
    runs = []
    for name, groups in MEMBERS.items():
        runs += await trigger_batch(h, name, [{"params": {"groups": groups, "hold_s": 0.02}}] * 12)
    for run in runs:
        assert (await h.finished(run["id"], timeout=60)).status is RunStatus.COMPLETED
    assert len(Seen.started) == len(runs)
    assert all(Seen.peak[name] <= group["max_concurrency"] for name, group in GROUPS.items()), Seen.peak
    assert (Seen.peak["a"], Seen.peak["b"]) == (2, 1)  # the limits were reached, not only kept


@both
async def test_the_queue_and_the_metrics_show_each_group(start_daemon):
    groups = {"db": {"max_concurrency": 1, "description": "the database"}, "idle": {"max_concurrency": 4}}
    jobs = {"load": {**GATED, "groups": ["db"]}, "report": {**GATED, "groups": ["db"]}, "free": GATED}
    h = await start_daemon(jobs, groups=groups, workers={"concurrency": 4})
    first = await h.trigger("load")
    await wait_for(lambda: first["id"] in Seen.started)
    waiting = [await h.trigger("report"), await h.trigger("load")]
    free = await h.trigger("free")
    await wait_for(lambda: free["id"] in Seen.started)  # free workers, yet db holds the other two back

    async def db_group() -> dict[str, Any]:
        return next(g for g in (await h.get_json("/api/v1/queue"))["groups"] if g["name"] == "db")

    expected = {"name": "db", "description": "the database", "limit": 1, "running": 1, "waiting": 2}
    await wait_for_async(lambda: db_group(), lambda g: {k: g[k] for k in expected} == expected)
    queue = await h.get_json("/api/v1/queue")
    assert [g["name"] for g in queue["groups"]] == ["db", "idle"]
    assert queue["groups"][0]["jobs"] == ["load", "report"]
    assert queue["groups"][1] == {
        "name": "idle",
        "description": "",
        "limit": 4,
        "running": 0,
        "waiting": 0,
        "jobs": [],
    }
    samples = await scrape(h.client)
    assert value(samples, "jobd_group_running", group="db") == 1
    assert value(samples, "jobd_group_limit", group="db") == 1
    assert value(samples, "jobd_group_waiting", group="db") == 2
    assert value(samples, "jobd_group_limit", group="idle") == 4
    assert [await h.status_of(run["id"]) for run in waiting] == [RunStatus.PENDING] * 2
    # One at a time, in order, as each frees the group's slot.
    for run in [first, *waiting]:
        await wait_for(lambda run=run: run["id"] in Seen.releases)
        Seen.releases[run["id"]].set()
        assert (await h.finished(run["id"])).status is RunStatus.COMPLETED
    assert Seen.started.index(waiting[0]["id"]) < Seen.started.index(waiting[1]["id"])
    Seen.releases[free["id"]].set()
    await h.finished(free["id"])


async def wait_for_async(read: Any, check: Any, *, timeout: float = 10.0) -> Any:
    """Poll an async read until `check` holds (a cluster node's table lags its feed a little)."""
    async with asyncio.timeout(timeout):
        while not check(value := await read()):
            await asyncio.sleep(0.02)
    return value


@both
async def test_a_reload_applies_a_raised_group_limit_to_new_starts(start_daemon, make_config):
    jobs = {"load": {**GATED, "groups": ["db"]}}
    h = await start_daemon(jobs, groups={"db": {"max_concurrency": 1}}, workers={"concurrency": 4})
    runs = [await h.trigger("load") for _ in range(3)]
    await wait_for(lambda: len(Seen.started) == 1)
    h.daemon.apply(make_config(jobs, groups={"db": {"max_concurrency": 3}}, workers={"concurrency": 4}))
    await wait_for(lambda: len(Seen.started) == 3)
    assert h.daemon.config.groups["db"].max_concurrency == 3
    for run in runs:
        Seen.releases[run["id"]].set()
        await h.finished(run["id"])


@both
async def test_jobs_show_their_groups_and_priority(start_daemon):
    h = await start_daemon({"load": {**GATED, "groups": ["db"], "priority": 7}}, groups={"db": {"max_concurrency": 1}})
    job = (await h.get_json("/api/v1/jobs/load"))["job"]
    assert (job["groups"], job["priority"]) == (["db"], 7)


# -- the config ------------------------------------------------------------------------------------


def parse(groups: Any, job: dict[str, Any]) -> Any:
    return parse_config({"groups": groups, "jobs": {"j": {"command": ["true"], **job}}}, environ={})


@pytest.mark.parametrize(
    ("groups", "job", "error"),
    [
        ({}, {"groups": ["db"]}, "jobs.j.groups: unknown group 'db' (groups: none is defined)"),
        ({"db": {"max_concurrency": 1}}, {"groups": ["dbb"]}, "jobs.j.groups: unknown group 'dbb' (groups: db)"),
        ({"db": {}}, {}, "groups.db.max_concurrency: required"),
        ({"db": {"max_concurrency": 0}}, {}, "groups.db.max_concurrency: 0 is out of range (must be at least 1)"),
        ({"db": {"max_concurrency": 1, "size": 2}}, {}, "groups.db.size: unknown key"),
        ({"-db": {"max_concurrency": 1}}, {}, "groups.-db: group names use letters"),
        ({"db": {"max_concurrency": 1}}, {"groups": ["db", "db"]}, "jobs.j.groups: 'db' is named twice"),
        ({}, {"groups": "db"}, "jobs.j.groups: must be a list of strings, not a string"),
        ({}, {"priority": 1001}, "jobs.j.priority: 1001 is out of range (must be from -1000 to 1000)"),
        ({}, {"priority": 1.5}, "jobs.j.priority: must be an integer, not a number"),
    ],
)
def test_config_errors_name_the_key(groups: Any, job: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(groups, job)
    assert str(raised.value).startswith(error), str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_defaults() -> None:
    config = parse({"db": {"max_concurrency": 2}}, {"groups": ["db"]})
    assert (config.jobs["j"].groups, config.jobs["j"].priority, config.workers.priority_aging_s) == (("db",), 0, 60.0)
    assert config.groups["db"].max_concurrency == 2


def test_jobd_check_refuses_an_unknown_group_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "jobd.toml"
    path.write_text('[groups.db]\nmax_concurrency = 1\n[jobs.j]\ncommand = ["true"]\ngroups = ["web"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "jobd", "check", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["jobd: invalid config: jobs.j.groups: unknown group 'web' (groups: db)"]
    path.write_text('[groups.db]\nmax_concurrency = 1\n[jobs.j]\ncommand = ["true"]\ngroups = ["db"]\npriority = 3\n')
    done = subprocess.run(
        [sys.executable, "-m", "jobd", "check", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# -- the cluster's claim, observed in the database -------------------------------------------------


async def create(
    conn: Conn, jobs: list[str], priorities: list[int] | None = None, *, at: int | None = None
) -> list[int]:
    ids = await next_run_ids(conn, len(jobs))
    now = now_ms() if at is None else at
    runs = [
        Run(id=i, job=job, status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=now, priority=p)
        for i, job, p in zip(ids, jobs, priorities or [0] * len(jobs))
    ]
    async with conn.transaction():
        await insert_runs(conn, runs)
    return ids


def ended(run: Run) -> Run:
    run.status = RunStatus.COMPLETED
    run.finished_at = run.updated_at = now_ms()
    return run


CLAIM_GROUPS = ClaimGroups(
    member_jobs=["ja", "jab", "jab", "jbc", "jbc", "jc", "jca", "jca"],
    member_groups=["a", "a", "b", "b", "c", "c", "c", "a"],
    names=["a", "b", "c"],
    caps=[2, 1, 3],
)


async def test_groups_hold_under_concurrent_claims(pg_db: str) -> None:
    """Six claimers on their own connections, each holding its runs a moment: at no moment are
    more runs of a group PROCESSING than its limit, and every run is claimed once (no deadlock
    between the locks of overlapping groups)."""
    caps = {job: 10 for job in MEMBERS}
    async with await connect(pg_db) as conn:
        ids = await create(conn, [list(MEMBERS)[i % len(MEMBERS)] for i in range(250)])
    taken: list[int] = []
    over: list[tuple[str, int]] = []

    async def check(probe: Conn) -> None:
        cur = await probe.execute("SELECT job, count(*) FROM runs WHERE status = 'PROCESSING' GROUP BY job")
        busy = {job: n for job, n in await cur.fetchall()}
        for group, limit in zip(CLAIM_GROUPS.names, CLAIM_GROUPS.caps):
            n = sum(busy.get(job, 0) for job, groups in MEMBERS.items() if group in groups)
            if n > limit:
                over.append((group, n))

    async def claimer(node: str) -> None:
        async with await connect(pg_db) as conn, await connect(pg_db) as probe:
            idle = 0
            while idle < 30:
                batch = await claim(conn, node, 3, caps, groups=CLAIM_GROUPS)
                if not batch:
                    idle += 1
                    await asyncio.sleep(0.002)
                    continue
                idle = 0
                taken.extend(c.run.id for c in batch)
                await check(probe)
                await asyncio.sleep(0.002)
                assert await finish_many(conn, [(ended(c.run), c.token) for c in batch]) == {c.run.id for c in batch}

    async with asyncio.timeout(120):
        await asyncio.gather(*(claimer(f"n{i}") for i in range(6)))
    assert over == []
    assert sorted(taken) == ids


async def test_a_run_blocked_by_one_group_takes_no_slot_of_another(pg_db: str) -> None:
    caps = {job: 10 for job in MEMBERS}
    async with await connect(pg_db) as conn:
        [holder] = await create(conn, ["jbc"])  # holds b's only slot
        assert [c.run.id for c in await claim(conn, "n1", 1, caps, groups=CLAIM_GROUPS)] == [holder]
        [blocked, free] = await create(conn, ["jab", "ja"])
        # jab needs b, which is full: ja's run starts, and jab's holds nothing of a meanwhile.
        claimed = await claim(conn, "n1", 5, caps, groups=CLAIM_GROUPS)
        assert [c.run.id for c in claimed] == [free]
        [another] = await create(conn, ["ja"])
        assert [c.run.id for c in await claim(conn, "n1", 5, caps, groups=CLAIM_GROUPS)] == [another]  # a: 2 of 2


@both
async def test_jobd_status_shows_each_group(start_daemon):
    h = await start_daemon({"load": {**GATED, "groups": ["db"]}}, groups={"db": {"max_concurrency": 1}})
    run = await h.trigger("load")
    await wait_for_async(lambda: h.get_json("/api/v1/queue"), lambda q: q["groups"][0]["running"] == 1)
    url = str(h.client.make_url("")).rstrip("/")
    code, out, err = await jobd_cli("status", "--url", url)
    assert code == 0, err
    assert "group db: 1/1 running, 0 waiting" in out.splitlines()
    await wait_for(lambda: run["id"] in Seen.releases)
    Seen.releases[run["id"]].set()
    await h.finished(run["id"])
