"""Statistics: the store's rollups and GET /api/v1/stats, checked against figures computed here from
the same generated runs; cursor paging of GET /api/v1/runs."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections import Counter
from datetime import date

import pytest
from conftest import wait_for
from rungen import generate_runs, insert_runs

from jobd.models import RunStatus, TriggerSource, now_ms
from jobd.store import RunFilter, SQLiteStore
from jobd.store.migrations import DAY_MS, MIGRATIONS

NOW = 1_790_000_000_000 + 13 * 3600 * 1000  # a fixed afternoon
TODAY = NOW // DAY_MS
JOBS = ("alpha", "beta", "gamma", "delta")


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    yield store
    await store.close()


def p95(durations: list[int]) -> int | None:
    if not durations:
        return None
    return sorted(durations)[math.ceil(len(durations) * 95 / 100) - 1]


def expected(runs, first_day: int, last_day: int, job: str | None = None) -> dict:
    """The figures, straight from the run objects."""
    chosen = [r for r in runs if first_day <= r.created_at // DAY_MS <= last_day and job in (None, r.job)]
    durations = [r.duration_ms for r in chosen if r.duration_ms is not None]
    days = Counter()
    completed = Counter()
    failed = Counter()
    for r in chosen:
        day = r.created_at // DAY_MS
        days[day] += 1
        completed[day] += r.status in (RunStatus.COMPLETED, RunStatus.PARTIAL)
        failed[day] += r.status is RunStatus.FAILED
    return {
        "by_status": {s: sum(r.status is s for r in chosen) for s in RunStatus},
        "by_trigger": {t: sum(r.triggered_by is t for r in chosen) for t in TriggerSource},
        "timed": len(durations),
        "duration_sum": sum(durations),
        "p95": p95(durations),
        "days": {day: (days[day], completed[day], failed[day]) for day in days},
    }


def summary_of(runs) -> dict:
    durations = [r.duration_ms for r in runs if r.duration_ms is not None]
    return {
        "runs": len(runs),
        "successful_runs": sum(r.status in (RunStatus.COMPLETED, RunStatus.PARTIAL) for r in runs),
        "failed_runs": sum(r.status is RunStatus.FAILED for r in runs),
        "total_items": sum(r.counts.total or 0 for r in runs),
        "successful_items": sum(r.counts.success for r in runs),
        "failed_items": sum(r.counts.failed for r in runs),
        "skipped_items": sum(r.counts.skipped for r in runs),
        "average_duration_ms": round(sum(durations) / len(durations), 1) if durations else None,
    }


async def test_run_stats_match_the_generated_history(store):
    runs = generate_runs(4000, now_ms=NOW, days=60, jobs=JOBS, seed=7)
    await insert_runs(store, runs)
    first, last = TODAY - 29, TODAY
    stats = await store.run_stats(first_day=first, last_day=last)
    want = expected(runs, first, last)
    assert stats.by_status == want["by_status"]
    assert stats.by_trigger == want["by_trigger"]
    assert stats.total == sum(want["by_status"].values()) > 1000
    assert (stats.timed, stats.duration_sum_ms, stats.p95_ms) == (want["timed"], want["duration_sum"], want["p95"])
    assert stats.days == want["days"]
    assert set(stats.jobs) == set(JOBS)
    # Each job's figures are read from the period's rows, or from the totals less the rows outside
    # it when the period holds most of the history: both ways give the same figures.
    for first_day, last_day in ((first, last), (TODAY - 59, TODAY), (TODAY - 50, TODAY - 2), (TODAY - 3, TODAY - 3)):
        period = await store.run_stats(first_day=first_day, last_day=last_day)
        for name, job_stats in period.jobs.items():
            mine = expected(runs, first_day, last_day, name)
            assert job_stats.by_status == mine["by_status"], (name, first_day, last_day)
            assert (job_stats.timed, job_stats.duration_sum_ms, job_stats.p95_ms) == (
                mine["timed"],
                mine["duration_sum"],
                mine["p95"],
            ), (name, first_day, last_day)
        assert set(period.jobs) == {r.job for r in runs if first_day <= r.created_at // DAY_MS <= last_day}
    one = await store.run_stats(first_day=first, last_day=last, job="beta")
    mine = expected(runs, first, last, "beta")
    assert (one.by_status, one.p95_ms, one.days, one.jobs) == (mine["by_status"], mine["p95"], mine["days"], {})
    # A single day, and a period with no runs at all.
    day = await store.run_stats(first_day=TODAY - 3, last_day=TODAY - 3)
    assert day.total == sum(expected(runs, TODAY - 3, TODAY - 3)["by_status"].values())
    empty = await store.run_stats(first_day=TODAY + 10, last_day=TODAY + 20)
    assert (empty.total, empty.p95_ms, empty.days, empty.jobs) == (0, None, {}, {})


async def test_rollups_follow_transitions_and_deletions(store):
    runs = generate_runs(600, now_ms=NOW, days=10, jobs=JOBS, seed=3)
    targets = generate_runs(600, now_ms=NOW, days=10, jobs=JOBS, seed=3)  # where each run ends up
    for run in runs:  # all start PENDING, as the daemon creates them
        run.status, run.started_at, run.finished_at = RunStatus.PENDING, None, None
    await insert_runs(store, runs)

    async def check() -> None:
        for where in (
            RunFilter(),
            RunFilter(job="alpha"),
            RunFilter(status=(RunStatus.FAILED, RunStatus.PENDING)),
            RunFilter(job="gamma", triggered_by=(TriggerSource.CRON,)),
            RunFilter(job="beta", status=(RunStatus.COMPLETED, RunStatus.PARTIAL)),
        ):
            fast = await store.summarize_runs(where)
            slow = await store.summarize_runs(dataclasses.replace(where, since=0))  # bypasses the rollups
            assert fast == slow, where
        assert await store.count_by_status() == {s: sum(r.status is s for r in runs) for s in RunStatus}
        stats = await store.run_stats(first_day=TODAY - 9, last_day=TODAY)
        assert stats.by_status == expected(runs, TODAY - 9, TODAY)["by_status"]

    await check()
    for run in runs[::2]:  # half start
        run.status, run.started_at = RunStatus.PROCESSING, run.created_at + 5
    await store.write(runs[::2])
    await check()
    for run, later in zip(runs, targets):  # each run reaches its generated state; then a plain rewrite
        run.status, run.counts = later.status, later.counts
        run.started_at, run.finished_at = later.started_at, later.finished_at
    await store.write(runs)
    await store.write(runs)
    await check()
    assert summary_of(runs) == await store.summarize_runs(RunFilter())
    cutoff = NOW + DAY_MS
    batch = await store.delete_runs(cutoffs={RunStatus.CANCELLED: cutoff, RunStatus.COMPLETED: cutoff}, limit=300)
    deleted = {run_id for run_id, _ in batch.deleted}
    assert 100 < len(deleted) < 300 and batch.cursor is not None
    runs = [run for run in runs if run.id not in deleted]
    await check()
    assert summary_of(runs) == await store.summarize_runs(RunFilter())
    page, total = await store.list_runs(RunFilter(job="alpha"), limit=5, offset=0)
    assert total == sum(run.job == "alpha" for run in runs) and len(page) == 5


async def test_migration_2_rolls_up_an_existing_store(tmp_path, store):
    runs = generate_runs(500, now_ms=NOW, days=5, jobs=JOBS, seed=11)
    await insert_runs(store, runs)
    await store.close()
    path = tmp_path / "jobd.db"
    # Back to a version-1 store that holds the same runs.
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TRIGGER runs_rollup_insert; DROP TRIGGER runs_rollup_finish; "
        "DROP TRIGGER runs_rollup_delete; DROP TABLE run_days; DROP TABLE run_totals; "
        "DROP INDEX runs_duration; DROP INDEX runs_job_duration; " + DROP_MIGRATION_3 + "PRAGMA user_version = 1;"
    )
    db.close()
    await store.open()
    version = (await store._fetchall("PRAGMA user_version"))[0][0]
    assert version == len(MIGRATIONS) >= 2
    stats = await store.run_stats(first_day=TODAY - 4, last_day=TODAY)
    want = expected(runs, TODAY - 4, TODAY)
    assert (stats.by_status, stats.p95_ms, stats.days) == (want["by_status"], want["p95"], want["days"])
    assert await store.summarize_runs(RunFilter()) == summary_of(runs)


async def test_migration_3_sums_the_jobs_of_an_existing_store(tmp_path, store):
    runs = generate_runs(500, now_ms=NOW, days=5, jobs=JOBS, seed=13)
    await insert_runs(store, runs)
    await store.close()
    db = sqlite3.connect(tmp_path / "jobd.db")
    db.executescript(DROP_MIGRATION_3 + "PRAGMA user_version = 2;")  # a version-2 store
    db.close()
    await store.open()
    assert (await store._fetchall("PRAGMA user_version"))[0][0] == len(MIGRATIONS) >= 3
    by_day = Counter(run.created_at // DAY_MS for run in runs if run.status.terminal)
    rows = await store._fetchall("SELECT day, SUM(runs) FROM run_days_all GROUP BY day")
    assert dict(rows) == dict(by_day)
    assert await store.summarize_runs(RunFilter()) == summary_of(runs)
    assert await store.count_by_status() == {s: sum(r.status is s for r in runs) for s in RunStatus}


DROP_MIGRATION_3 = (
    "DROP TRIGGER runs_rollup_all_insert; DROP TRIGGER runs_rollup_all_finish; "
    "DROP TRIGGER runs_rollup_all_delete; DROP TABLE run_days_all; "
    "ALTER TABLE runs DROP COLUMN priority; "  # and the migrations after it (a run's priority)
)


# -- through the API ---------------------------------------------------------------------------------


NOOP = {"handler": "sample_jobs:noop", "overlap": "allow"}
FAILS = {"handler": "sample_jobs:fails", "overlap": "allow"}


async def test_stats_endpoint(start_daemon):
    h = await start_daemon({"noop": NOOP, "bad": FAILS, "idle": NOOP})
    history = generate_runs(1500, now_ms=now_ms(), days=20, jobs=("noop", "bad", "gone"), seed=5)
    history = [run for run in history if run.status.terminal]
    await insert_runs(h.daemon.store, history)
    live = [(await h.trigger("noop"))["id"] for _ in range(3)] + [(await h.trigger("bad"))["id"]]
    for run_id in live:
        await h.finished(run_id)
    runs = [*history, *[await h.daemon.store.get_run(run_id) for run_id in live]]

    answer = await h.get_json("/api/v1/stats?days=7")
    first = date.fromisoformat(answer["since"][:10]).toordinal() - date(1970, 1, 1).toordinal()
    last = first + 6
    want = expected(runs, first, last)
    assert answer["days"] == 7 and answer["job"] is None
    assert answer["total"] == sum(want["by_status"].values())
    assert answer["by_status"] == {s.value: n for s, n in want["by_status"].items()}
    assert answer["by_trigger"] == {t.value: n for t, n in want["by_trigger"].items()}
    ok = want["by_status"][RunStatus.COMPLETED] + want["by_status"][RunStatus.PARTIAL]
    assert answer["success_rate"] == round(ok / (ok + want["by_status"][RunStatus.FAILED]), 4)
    assert answer["average_duration_ms"] == round(want["duration_sum"] / want["timed"], 1)
    assert answer["p95_duration_ms"] == want["p95"]
    assert [entry["date"] for entry in answer["timeline"]] == [
        date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat() for day in range(first, last + 1)
    ]
    for entry, day in zip(answer["timeline"], range(first, last + 1)):
        assert (entry["total"], entry["completed"], entry["failed"]) == want["days"].get(day, (0, 0, 0))
    by_job = {entry["job"]: entry for entry in answer["jobs"]}
    assert set(by_job) == {"noop", "bad", "idle", "gone"}  # configured ones even without runs; old ones too
    assert by_job["idle"]["total"] == 0 and by_job["idle"]["success_rate"] is None
    assert by_job["bad"]["p95_duration_ms"] == expected(runs, first, last, "bad")["p95"]
    assert by_job["bad"]["by_status"]["FAILED"] >= 1

    one = await h.get_json("/api/v1/stats?job=noop&days=366")
    assert "jobs" not in one and len(one["timeline"]) == 366 and one["job"] == "noop"
    assert one["total"] == sum(1 for run in runs if run.job == "noop")

    for query in ("days=0", "days=367", "days=abc", "days=1.5"):
        response = await h.client.get(f"/api/v1/stats?{query}")
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"
    response = await h.client.get("/api/v1/stats?job=nope")
    assert response.status == 404 and response.content_type == "application/problem+json"
    assert "nope" in (await response.json())["detail"]


async def test_runs_statistics_and_totals_through_the_api(start_daemon):
    h = await start_daemon({"noop": NOOP, "bad": FAILS})
    history = generate_runs(800, now_ms=now_ms(), days=3, jobs=("noop", "bad"), seed=9)
    history = [run for run in history if run.status.terminal]
    await insert_runs(h.daemon.store, history)
    page = await h.get_json("/api/v1/runs?job=bad&limit=10")
    mine = [run for run in history if run.job == "bad"]
    assert page["pagination"]["total"] == len(mine)
    assert page["statistics"] == summary_of(mine)
    assert [run["id"] for run in page["runs"]] == sorted((run.id for run in mine), reverse=True)[:10]


async def test_cursor_pages_are_stable_while_runs_arrive(start_daemon):
    h = await start_daemon({"noop": NOOP})
    history = generate_runs(95, now_ms=now_ms(), days=1, jobs=("noop",), seed=2)
    history = [dataclasses.replace(run, status=RunStatus.COMPLETED) for run in history]
    for run in history:
        run.started_at, run.finished_at = run.created_at, run.created_at + 10
    await insert_runs(h.daemon.store, history)
    seen: list[int] = []
    cursor = None
    arrived = []
    while True:
        url = "/api/v1/runs?job=noop&limit=20" + (f"&cursor={cursor}" if cursor else "")
        page = await h.get_json(url)
        assert page["pagination"]["total"] == len(history) + len(arrived)
        seen.extend(run["id"] for run in page["runs"])
        cursor = page["pagination"]["next_cursor"]
        assert (cursor is not None) == page["pagination"]["has_more"]
        if cursor is None:
            break
        arrived.append((await h.trigger("noop"))["id"])  # new runs go on top, not into later pages
    assert seen == sorted((run.id for run in history), reverse=True)
    for run_id in arrived:
        await h.finished(run_id)
    await wait_for(lambda: not h.daemon.runs.active)
    for bad in ("!!", "bm90LWEtbnVtYmVy", "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA", "%00"):
        response = await h.client.get(f"/api/v1/runs?cursor={bad}")
        assert response.status == 400, bad
        assert response.content_type == "application/problem+json"
