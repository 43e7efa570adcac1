"""Chains without a daemon: `jobd check` (cycles refused, chains described), and the chain
migration upgrading an existing store: SQLite rebuilds its runs table (its CHECK on triggered_by
gains 'chain') with the indexes and the rollup triggers of migrations 2 and 3 as they were;
PostgreSQL alters its table. The runs already there keep every field and count once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_config import run_cli

from jobd.models import DAY_MS, Run, RunStatus, TriggerSource
from jobd.store import SQLiteStore
from jobd.store.migrations import MIGRATIONS, migrate
from jobd.store.postgres import connect_sync
from jobd.store.postgres import schema as pg_schema

BEFORE_CHAINS = 3  # the version a store had before chains
OLD_COLUMNS = (
    "id, job, status, triggered_by, params, created_at, started_at, finished_at, duration_ms, counts_total, "
    "counts_success, counts_failed, counts_skipped, updated_at"
)
OLD_ROWS = [
    (1, "nightly", "COMPLETED", "cron", '{"a":1}', DAY_MS, DAY_MS, DAY_MS + 500, 500, 10, 9, 1, 0, DAY_MS + 500),
    (2, "nightly", "FAILED", "api", "{}", DAY_MS + 1, DAY_MS + 1, DAY_MS + 100, 99, None, 0, 0, 0, DAY_MS + 100),
    (3, "other", "PENDING", "manual", "{}", DAY_MS + 2, None, None, None, None, 0, 0, 0, DAY_MS + 2),
]


def old_sqlite_store(path: Path) -> None:
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:BEFORE_CHAINS], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    db.executemany(f"INSERT INTO runs ({OLD_COLUMNS}) VALUES ({', '.join('?' * 14)})", OLD_ROWS)
    db.commit()
    db.close()


def rollups(db: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(
        db.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
        for table in ("run_totals", "run_days", "run_days_all")
    )


def test_an_existing_sqlite_store_is_upgraded_with_its_indexes_and_rollup_triggers(tmp_path: Path) -> None:
    path = tmp_path / "jobd.db"
    old_sqlite_store(path)
    db = sqlite3.connect(path)
    indexes_before = {
        row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")
    }
    triggers_before = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    counted_before = rollups(db)
    assert migrate(db) == len(MIGRATIONS)
    assert db.execute("SELECT id, job, status, triggered_by, params, duration_ms FROM runs ORDER BY id").fetchall() == [
        (row[0], row[1], row[2], row[3], row[4], row[8]) for row in OLD_ROWS
    ]
    assert db.execute("SELECT parent_run_id, chain_depth, children FROM runs WHERE id = 1").fetchone() == (
        None,
        0,
        None,
    )
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")}
    assert indexes_before | {"runs_parent"} == names
    assert triggers_before == {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert rollups(db) == counted_before  # copying the rows counted none of them again
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # The triggers still count: a chained run that finishes, then its deletion.
    db.execute(
        "INSERT INTO runs (id, job, status, triggered_by, created_at, parent_run_id, chain_depth) "
        f"VALUES (4, 'nightly', 'PENDING', 'chain', {DAY_MS + 3}, 1, 1)"
    )
    db.execute("UPDATE runs SET status = 'COMPLETED', duration_ms = 7 WHERE id = 4")
    assert db.execute("SELECT runs, duration_sum FROM run_totals WHERE triggered_by = 'chain'").fetchone() == (1, 7)
    assert db.execute("SELECT runs FROM run_days_all WHERE triggered_by = 'chain'").fetchone() == (1,)
    db.execute("DELETE FROM runs WHERE id = 4")
    assert db.execute("SELECT count(*) FROM run_totals WHERE triggered_by = 'chain'").fetchone() == (0,)
    assert rollups(db) == counted_before
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(
            f"INSERT INTO runs (id, job, status, triggered_by, created_at) VALUES (5, 'x', 'PENDING', 'bogus', {DAY_MS})"
        )
    db.commit()
    db.close()


async def test_an_upgraded_sqlite_store_reads_and_writes_chained_runs(tmp_path: Path) -> None:
    path = tmp_path / "jobd.db"
    old_sqlite_store(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get_run(1)
        assert old is not None and old.parent_run_id is None and old.children == [] and old.params == {"a": 1}
        child = Run(
            id=store.allocate_run_id(),
            job="other",
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.CHAIN,
            created_at=DAY_MS + 5,
            parent_run_id=1,
            chain_depth=1,
        )
        old.children = [{"job": "other", "run_id": child.id}]
        await store.write([old, child])
        assert (await store.get_run(child.id)) == child
        assert (await store.get_run(1)).children == [{"job": "other", "run_id": 4}]  # type: ignore[union-attr]
        stats = await store.run_stats(first_day=1, last_day=1)
        assert stats.by_trigger[TriggerSource.CRON] == 1 and stats.by_trigger[TriggerSource.CHAIN] == 1
    finally:
        await store.close()


def test_an_existing_postgresql_database_is_upgraded(pg_dsn: str) -> None:
    with connect_sync(pg_dsn) as conn:
        with conn.transaction():
            conn.execute(pg_schema._VERSION_TABLE)
            for number, script in enumerate(pg_schema.MIGRATIONS[:BEFORE_CHAINS], start=1):
                conn.execute(script.encode())
                conn.execute(pg_schema._WRITE_VERSION.format(number).encode())
            for row in OLD_ROWS:
                conn.execute(f"INSERT INTO runs ({OLD_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})", row)
        assert pg_schema.migrate_sync(conn) == len(pg_schema.MIGRATIONS)
        rows = conn.execute("SELECT id, triggered_by, parent_run_id, chain_depth, children FROM runs ORDER BY id")
        assert rows.fetchall() == [(1, "cron", None, 0, None), (2, "api", None, 0, None), (3, "manual", None, 0, None)]
        conn.execute(
            "INSERT INTO runs (id, job, status, triggered_by, created_at, parent_run_id, chain_depth) "
            "VALUES (4, 'other', 'PENDING', 'chain', 1, 1, 1)"
        )
        with pytest.raises(Exception, match="runs_triggered_by_check"):
            conn.execute(
                "INSERT INTO runs (id, job, status, triggered_by, created_at) VALUES (5, 'x', 'PENDING', 'bogus', 1)"
            )


def test_jobd_check_refuses_a_cycle_and_describes_chains(tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text(
        '[jobs.extract]\ncommand = ["true"]\non_success = ["load"]\non_failure = ["alert"]\n'
        '[jobs.load]\ncommand = ["true"]\non_finish = ["extract"]\nchain_partial_as = "failure"\n'
        '[jobs.alert]\ncommand = ["true"]\n'
    )
    refused = run_cli("check", "-c", str(config))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == "jobd: invalid config: jobs.extract.on_success: chain cycle extract → load → extract\n"

    config.write_text(config.read_text().replace('on_finish = ["extract"]', 'on_finish = ["alert"]'))
    human = run_cli("check", "-c", str(config))
    assert human.returncode == 0, human.stderr
    assert "extract: no schedule (manual triggers only)\n  on_success → load\n  on_failure → alert\n" in human.stdout
    assert "  on_finish → alert\n  (PARTIAL counts as failure; max_chain_depth 10)\n" in human.stdout
    report = json.loads(run_cli("check", "-c", str(config), "--json").stdout)
    assert report["chains"]["load"] == {
        "on_success": [],
        "on_failure": [],
        "on_finish": ["alert"],
        "chain_params": {},
        "chain_partial_as": "failure",
        "max_chain_depth": 10,
    }
    assert set(report["chains"]) == {"extract", "load"}


def test_a_cycle_is_named_from_its_first_job_in_name_order() -> None:
    from jobd.config import ConfigError, parse_config

    jobs = {
        "a": {"command": ["true"], "on_success": ["c"]},
        "c": {"command": ["true"], "on_failure": ["b"]},
        "b": {"command": ["true"], "on_finish": ["c"]},
    }
    with pytest.raises(ConfigError, match=r"^jobs\.b\.on_finish: chain cycle b → c → b$"):
        parse_config({"jobs": jobs}, environ={})
    jobs["b"] = {"command": ["true"], "on_finish": ["a"], "on_success": ["a"]}  # one job named by two keys
    with pytest.raises(ConfigError, match=r"^jobs\.a\.on_success: chain cycle a → c → b → a$"):
        parse_config({"jobs": jobs}, environ={})
    jobs["b"] = {"command": ["true"], "on_success": ["a", "a"]}
    with pytest.raises(ConfigError, match=r"^jobs\.b\.on_success: names a job more than once$"):
        parse_config({"jobs": jobs}, environ={})
