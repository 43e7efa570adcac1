"""The SQLite store: WAL, migrations at start, runs durable before they are announced, progress
written coalesced rather than a transaction per tick."""

from __future__ import annotations

import inspect
import sqlite3
import sys

import pytest
from conftest import wait_for

from jobd.models import Counts, Run, RunStatus, TriggerSource, now_ms
from jobd.store import SQLiteStore, Store
from jobd.store.migrations import MIGRATIONS

PYTHON = sys.executable


def read_row(path, run_id: int) -> tuple | None:
    """The run as another process would see it: its own connection, no jobd code."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT status, progress FROM runs WHERE id = ?", (run_id,)).fetchone()


async def test_wal_and_migrations_at_start_and_data_kept_across_opens(tmp_path):
    path = tmp_path / "jobd.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        run = Run(
            id=store.allocate_run_id(),
            job="a",
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.API,
            created_at=now_ms(),
        )
        await store.write([run])
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    again = SQLiteStore(path)
    await again.open()
    try:
        assert (await again.get_run(run.id)).job == "a"
        assert again.allocate_run_id() == run.id + 1  # ids continue, never reused
    finally:
        await again.close()


def test_the_sqlite_store_implements_the_whole_interface():
    wanted = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    assert len(wanted) > 10
    for name in wanted:
        ours, interface = (inspect.signature(getattr(cls, name)).parameters for cls in (SQLiteStore, Store))
        assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in interface.values()], name


async def test_a_run_is_in_the_store_when_the_trigger_answers(start_daemon, tmp_path):
    h = await start_daemon({"slow": {"handler": "sample_jobs:sleepy"}}, workers={"concurrency": 1})
    run = await h.trigger("slow", {"seconds": 30})
    assert read_row(h.daemon.config.store.path, run["id"]) is not None
    # The move to PROCESSING is written at once too, while the handler still runs.
    await wait_for(lambda: (read_row(h.daemon.config.store.path, run["id"]) or ("",))[0] == "PROCESSING")
    await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert read_row(h.daemon.config.store.path, run["id"])[0] == "CANCELLED"


async def test_progress_ticks_do_not_each_open_a_transaction(start_daemon):
    ticks = 2000
    script = f"for i in range({ticks}): print(f'::progress::{{i * 100 / {ticks}}} step {{i}}', flush=True)"
    h = await start_daemon({"ticker": {"command": [PYTHON, "-c", script]}})
    # SQLite itself counts the writes of each run's row: a trigger in the daemon's database.
    with sqlite3.connect(h.daemon.config.store.path) as db:
        db.executescript(
            "CREATE TABLE run_writes (run_id INTEGER NOT NULL);"
            "CREATE TRIGGER count_run_writes AFTER UPDATE ON runs BEGIN INSERT INTO run_writes VALUES (new.id); END;"
        )
    run = await h.trigger("ticker")
    done = await h.finished(run["id"])
    assert done.status is RunStatus.COMPLETED and done.progress == 100.0
    assert done.message == f"step {ticks - 1}"
    with sqlite3.connect(h.daemon.config.store.path) as db:
        (writes,) = db.execute("SELECT COUNT(*) FROM run_writes WHERE run_id = ?", (run["id"],)).fetchone()
    # Start and finish, plus at most a lazy flush a second: nowhere near one per tick.
    assert 2 <= writes < 20


TRICKY = ['quote " backslash \\ slash / \\u0041', "tab\tnew\nline\r\x1f\x7f", "émoji 😀 and 漢字", "", "x" * 70_000]


@pytest.mark.parametrize("texts", [TRICKY, ["a NUL \x00 inside", *TRICKY]], ids=["one-statement", "with-nul"])
async def test_runs_come_back_as_written_whatever_their_text(tmp_path, texts):
    # A group commit's rows go in as one JSON document, or row by row when a text holds a NUL.
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    try:
        runs = [
            Run(
                id=store.allocate_run_id(),
                job=f"job-{index}",
                status=RunStatus.PROCESSING,
                triggered_by=TriggerSource.API,
                created_at=1_790_000_000_123 + index,
                params={"text": text, "n": 2**62, "f": 0.1 + 0.2, "nested": [None, True, {"a": []}]},
                progress=100 / 3,
                message=text,
                started_at=1_790_000_000_200,
                log_tail=text,
                counts=Counts(total=None, success=3, failed=0, skipped=2**40),
                result={"text": text},
                updated_at=1_790_000_000_300,
            )
            for index, text in enumerate(texts)
        ]
        await store.write(runs)
        assert await store.get_runs([run.id for run in runs]) == runs
        finished = [run.copy() for run in runs]
        for run in finished:  # the same rows again, as an upsert: the terminal state of each
            run.status, run.finished_at, run.error, run.exit_code = RunStatus.FAILED, 1_790_000_001_000, run.message, -9
        await store.write(finished)
        assert await store.get_runs([run.id for run in runs]) == finished
    finally:
        await store.close()
