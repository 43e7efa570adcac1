"""Retention against a real daemon on each backend (a SQLite file, or PostgreSQL as a one-node
cluster) and real log files; the clock is injected."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import BACKENDS, sqlite_only, wait_for

from jobd.config import ConfigError, parse_config
from jobd.models import Run, RunStatus, TriggerSource, now_ms
from jobd.retention import DAY_MS, Retention
from jobd.runlog import log_path
from jobd.store import RunFilter, SQLiteStore

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

JOBS = {
    "ok": {"shell": "echo hello from $JOBD_RUN_ID", "overlap": "allow", "max_concurrency": 4},
    "bad": {"shell": "echo oops >&2; exit 3", "overlap": "allow", "max_concurrency": 4},
    "quiet": {"command": ["true"]},
}


def retention_at(daemon, when: int, **config) -> Retention:
    """The daemon's own store, run table and logs, cleaned as if it were `when`."""
    return Retention(
        dataclasses.replace(daemon.config.retention, **config),
        runs=daemon.backend,
        logs_dir=daemon.config.store.logs_dir,
        clock=lambda: when,
        pause_s=0,
    )


async def stored_ids(daemon) -> set[int]:
    runs, _ = await daemon.store.list_runs(RunFilter(), limit=10_000, offset=0)
    return {run.id for run in runs}


async def save_job_state(daemon, state) -> None:
    """As the daemon's own store keeps it."""
    if daemon.config.store.url is None:
        await daemon.store.write(job_states=[state])
        return
    from jobd.store.postgres import connect
    from jobd.store.postgres.cluster import save_job_state as save

    async with await connect(daemon.config.store.url) as conn, conn.transaction():
        await save(conn, state)


async def test_old_runs_and_their_logs_go_and_the_job_state_stays(start_daemon):
    h = await start_daemon(JOBS, retention={"first_delay_s": 3600})
    daemon = h.daemon
    ok = [await h.trigger("ok") for _ in range(3)]
    keyed = await h.trigger("ok", headers={"Idempotency-Key": "order-1"})
    bad = [await h.trigger("bad") for _ in range(2)]
    quiet = await h.trigger("quiet")
    for run in [*ok, keyed, *bad, quiet]:
        await h.finished(run["id"])
    state = daemon.runs.job_state("bad")
    state.last_fire_at = now_ms() - 1000  # as a cron fire stores it
    await save_job_state(daemon, state)
    logs = daemon.config.store.logs_dir
    ok_ids = [r["id"] for r in [*ok, keyed]]
    bad_ids = [r["id"] for r in bad]
    assert all(log_path(logs, i).exists() for i in ok_ids + bad_ids)
    assert not log_path(logs, quiet["id"]).exists()  # it printed nothing
    states_before = await daemon.store.job_states()
    everything = await stored_ids(daemon)
    now = now_ms()

    result = await retention_at(daemon, now + 3600_000).sweep()
    assert sum(result.runs.values()) == 0 and result.keys == 0
    # Ten days on no run is old enough yet; idempotency keys (24 h) are.
    result = await retention_at(daemon, now + 10 * DAY_MS).sweep()
    assert sum(result.runs.values()) == 0 and result.keys == 1
    assert await daemon.store.find_idempotent("ok", "order-1", 0) is None
    assert await stored_ids(daemon) == everything

    # A month on: finished runs go, FAILED ones stay; each job's last run and the newest run stay.
    result = await retention_at(daemon, now + 31 * DAY_MS).sweep()
    last_ok = daemon.runs.job_state("ok").last_run_id
    assert last_ok == ok_ids[-1]
    gone = set(ok_ids) - {last_ok}
    assert result.runs == {RunStatus.COMPLETED: len(gone)} and result.logs == len(gone)
    assert await stored_ids(daemon) == everything - gone
    assert not any(log_path(logs, i).exists() for i in gone)
    assert log_path(logs, last_ok).exists() and all(log_path(logs, i).exists() for i in bad_ids)
    for run_id in gone:
        await h.get_json(f"/api/v1/runs/{run_id}", expect=404)

    result = await retention_at(daemon, now + 91 * DAY_MS).sweep()
    assert result.runs == {RunStatus.FAILED: 1} and not log_path(logs, bad_ids[0]).exists()
    assert await stored_ids(daemon) == {last_ok, bad_ids[-1], quiet["id"]}

    # The job state is untouched, and what the API shows of it too.
    assert await daemon.store.job_states() == states_before
    job = (await h.get_json("/api/v1/jobs/bad"))["job"]
    assert job["consecutive_failures"] == 2 and job["last_fire_at"] is not None
    assert job["last_run"]["id"] == bad_ids[-1]
    # The live totals follow the store's.
    queue = await h.get_json("/api/v1/queue")
    stored = await daemon.store.count_by_status()
    assert queue["counts"] == {status.value: n for status, n in stored.items()}
    assert queue["counts"]["COMPLETED"] == 2 and queue["counts"]["FAILED"] == 1
    # Ids are never handed out again, even after a restart.
    await h.client.close()  # stops that daemon: the store is free for the next one
    h2 = await start_daemon(JOBS, retention={"first_delay_s": 3600})
    again = await h2.trigger("ok")
    assert again["id"] > max(everything)
    assert (await h2.get_json("/api/v1/jobs/bad"))["job"]["consecutive_failures"] == 2


def old_run(run_id: int, status: RunStatus, finished_at: int, job: str = "ok") -> Run:
    return Run(
        id=run_id,
        job=job,
        status=status,
        triggered_by=TriggerSource.API,
        created_at=finished_at - 10,
        started_at=finished_at - 5,
        finished_at=finished_at,
        updated_at=finished_at,
    )


async def test_a_big_clean_up_goes_in_batches_while_the_api_answers(start_daemon, backend):
    sqlite_only(backend, "writes an old history straight into the SQLite store")
    h = await start_daemon(JOBS, retention={"first_delay_s": 3600, "batch_size": 100})
    daemon = h.daemon
    now = now_ms()
    # 60-day-old history: FAILED runs (kept 90 days) interleaved with 1,200 finished ones.
    runs = []
    for n in range(2400):
        status = RunStatus.FAILED if n % 2 else RunStatus.COMPLETED
        runs.append(old_run(daemon.store.allocate_run_id(), status, now - 60 * DAY_MS + n))
    await daemon.store.write(runs)
    for run in runs[:50]:
        path = log_path(daemon.config.store.logs_dir, run.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old output\n")
    retention = Retention(
        daemon.config.retention,
        runs=daemon.backend,
        logs_dir=daemon.config.store.logs_dir,
        clock=lambda: now,
    )  # the real pause
    sweep = asyncio.create_task(retention.sweep())
    answered = 0
    while not sweep.done():
        await h.get_json("/api/v1/runs?limit=1")
        answered += 1
    result = await sweep
    assert result.runs == {RunStatus.COMPLETED: 1200} and result.logs == 25
    # FAILED rows outnumber a batch many times over; the cursor walks past them, each batch is small.
    assert result.batches >= 24
    assert answered >= result.batches // 2  # requests were answered between batches
    left = await daemon.store.list_runs(RunFilter(), limit=5000, offset=0)
    assert {run.status for run in left[0]} == {RunStatus.FAILED} and left[1] == 1200
    # A run triggered now, during or after a clean-up, is untouched.
    fresh = await h.trigger("quiet")
    assert (await h.finished(fresh["id"])).status is RunStatus.COMPLETED
    assert fresh["id"] in await stored_ids(daemon)


async def test_zero_days_keeps_runs_for_ever(start_daemon):
    h = await start_daemon(JOBS, retention={"first_delay_s": 3600, "days": 0, "failed_days": 0})
    run = await h.trigger("quiet")
    await h.finished(run["id"])
    other = await h.trigger("ok")
    await h.finished(other["id"])
    retention = retention_at(h.daemon, now_ms() + 3650 * DAY_MS)
    assert retention.cutoffs(now_ms()) == {}
    result = await retention.sweep()
    assert sum(result.runs.values()) == 0 and result.batches == 0
    assert await stored_ids(h.daemon) == {run["id"], other["id"]}


async def test_the_daemon_cleans_up_shortly_after_start(start_daemon, make_config, backend):
    sqlite_only(backend, "writes an old history straight into the SQLite store")
    config = make_config(JOBS, retention={"first_delay_s": 0, "days": 1})
    store = SQLiteStore(config.store.path)  # a history left by an earlier daemon
    await store.open()
    old, recent = (old_run(store.allocate_run_id(), RunStatus.COMPLETED, now_ms() - age) for age in (2 * DAY_MS, 0))
    await store.write([old, recent])
    await store.close()
    h = await start_daemon(config=config)

    async def only_the_recent_one_left() -> bool:
        return await stored_ids(h.daemon) == {recent.id}

    await wait_for(only_the_recent_one_left)
    # It carries on: the next pass comes `interval_s` (a day) later.
    assert h.daemon.retention.running


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("first_delay_s", -1, "retention.first_delay_s: -1 is below the minimum 0"),
        ("days", "a month", "retention.days: must be a number"),
        ("batch_size", 0, "retention.batch_size: 0 is out of range"),
        ("weeks", 4, "retention.weeks"),
    ],
)
def test_retention_config_errors_name_the_key(key, value, message, backend):
    sqlite_only(backend, "reads the config alone")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({"retention": {key: value}}, environ={})
