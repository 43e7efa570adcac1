"""`jobd migrate` and `jobd copy-store` against a real PostgreSQL: the schema applied and reported,
a single node's history (written by jobd itself) moved row for row, and every refusal."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
from conftest import wait_for
from process import DaemonProcess
from psycopg import conninfo

from jobd.dburl import redact_url
from jobd.models import Counts, Run, RunStatus, TriggerSource, now_ms
from jobd.store import SQLiteStore
from jobd.store.base import RUN_COLUMNS, IdempotencyKey, JobState
from jobd.store.postgres import connect, connect_sync
from jobd.store.postgres.runs import get_run
from jobd.store.postgres.schema import MIGRATIONS

if TYPE_CHECKING:
    from tests.postgres import PgServer

pytest_plugins = ("tests.postgres",)
ROOT = Path(__file__).parent.parent
RUNS = ", ".join(RUN_COLUMNS)


def jobd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobd", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Any:
    """A database of its own for the test (copy-store wants an empty one each time), as a URL."""
    name = pg_server.create_database()
    try:
        yield as_url(pg_server.dsn(name))
    finally:
        pg_server.drop_database(name)


def as_url(dsn: str, password: str | None = None) -> str:
    """A libpq DSN as the postgresql:// URL jobd's configuration takes."""
    params = conninfo.conninfo_to_dict(dsn)
    user = quote(str(params.pop("user", "")), safe="")
    secret = "" if password is None else f":{password}"
    host, port, dbname = params.pop("host", ""), params.pop("port", ""), params.pop("dbname", "")
    netloc = f"{user}{secret}@{host}" if user else str(host)
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in params.items())
    return f"postgresql://{netloc}{f':{port}' if port else ''}/{dbname}" + (f"?{query}" if query else "")


def with_password(url: str) -> str:
    """The URL with a password in it, which the tests' server does not ask for: to check that it
    is never shown (an external server of JOBD_TEST_PG_DSN may need its own: kept then)."""
    return url if ":" in url.partition("://")[2].partition("@")[0] else url.replace("@", ":s3cret@", 1)


def counts(dsn: str) -> tuple[int, ...]:
    with connect_sync(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM job_state), (SELECT count(*) FROM idempotency)"
        ).fetchone()
    assert row is not None
    return tuple(row)


# -- migrate ------------------------------------------------------------------------------------------


def test_migrate_applies_the_schema_then_finds_it_up_to_date(tmp_path: Path, fresh_db: str) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[store]\nurl_env = "TEST_DB"\n')
    env = {"TEST_DB": with_password(fresh_db)}
    shown = redact_url(with_password(fresh_db))
    first = jobd("migrate", "-c", str(config), env=env)
    assert first.returncode == 0, first.stderr
    applied = ", ".join(str(n) for n in range(1, len(MIGRATIONS) + 1))
    assert first.stdout == f"{shown}: schema at version {len(MIGRATIONS)} (applied: {applied})\n"
    again = jobd("migrate", "-c", str(config), env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{shown}: schema at version {len(MIGRATIONS)}, up to date\n"
    with connect_sync(fresh_db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


def test_migrate_with_a_sqlite_store_has_nothing_to_do(tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[store]\npath = "jobd.db"\n')
    result = jobd("migrate", "-c", str(config))
    assert result.returncode == 0
    assert result.stdout == f"{tmp_path / 'jobd.db'}: a SQLite store migrates itself when jobd starts; nothing to do\n"
    assert not (tmp_path / "jobd.db").exists()


def test_migrate_exit_codes_and_no_password(tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[store]\nurl = "mysql://root@db/jobd"\n')
    result = jobd("migrate", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        "jobd: invalid config: store.url: 'mysql://root@db/jobd' must start with postgresql:// or postgres://\n"
    )
    port = closed_port()
    config.write_text(f'[store]\nurl = "postgresql://jobd:s3cret@127.0.0.1:{port}/jobd"\n')
    result = jobd("migrate", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith(f"jobd: cannot migrate postgresql://jobd:***@127.0.0.1:{port}/jobd: ")
    assert result.stderr.count("\n") == 1 and "s3cret" not in result.stderr


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- copy-store ---------------------------------------------------------------------------------------


def history(now: int) -> list[Run]:
    """Runs of every status and source, with every column used at least once."""
    runs = [
        Run(
            id=1,
            job="etl",
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.API,
            created_at=now,
            params={"day": "2026-12-01", "n": 3},
        ),
        Run(
            id=2,
            job="etl",
            status=RunStatus.PROCESSING,
            triggered_by=TriggerSource.CRON,
            created_at=now,
            scheduled_for=now - 1000,
            started_at=now + 5,
            progress=42.5,
            message="halfway",
            counts=Counts(10, 4, 1, 0),
        ),
        Run(
            id=3,
            job="etl",
            status=RunStatus.COMPLETED,
            triggered_by=TriggerSource.MANUAL,
            created_at=now - 60_000,
            started_at=now - 59_000,
            finished_at=now - 58_000,
            progress=100.0,
            result={"rows": 1234, "tables": ["a", "b"], "nested": {"ok": True}},
            counts=Counts(None, 7, 0, 2),
            exit_code=0,
            log_tail="line 1\nline 2\n",
            updated_at=now - 58_000,
        ),
        Run(
            id=4,
            job="mail",
            status=RunStatus.FAILED,
            triggered_by=TriggerSource.CATCHUP,
            created_at=now - 50_000,
            started_at=now - 49_000,
            finished_at=now - 48_000,
            error="exit code 3",
            exit_code=3,
            attempt=1,
            max_attempts=3,
            log_tail="binary \x00 output\n",
            message="ünïcødé ✓",
        ),
        Run(
            id=5,
            job="mail",
            status=RunStatus.PENDING,
            triggered_by=TriggerSource.RETRY,
            created_at=now - 47_000,
            retry_of=4,
            attempt=2,
            max_attempts=3,
            run_after=now + 10_000,
        ),
        Run(
            id=7,  # ids are kept, gaps included
            job="mail",
            status=RunStatus.PARTIAL,
            triggered_by=TriggerSource.API,
            created_at=now - 40_000,
            started_at=now - 39_000,
            finished_at=now - 30_000,
            counts=Counts(5, 3, 2, 0),
            result=[1, "two", None],
        ),
        Run(
            id=8,
            job="etl",
            status=RunStatus.CANCELLED,
            triggered_by=TriggerSource.API,
            created_at=now - 20_000,
            started_at=now - 19_000,
            finished_at=now - 18_000,
            error="cancelled",
        ),
    ]
    # Enough finished runs to take several batches of the copy.
    runs += [
        Run(
            id=100 + i,
            job=f"bulk-{i % 7}",
            status=RunStatus.COMPLETED if i % 3 else RunStatus.FAILED,
            triggered_by=TriggerSource.API,
            created_at=now - 100_000 + i,
            started_at=now - 100_000 + i,
            finished_at=now - 99_000 + i,
            params={"i": i},
            updated_at=now,
        )
        for i in range(12_000)
    ]
    return runs


async def write_sqlite_history(path: Path) -> tuple[list[Run], list[JobState], list[IdempotencyKey]]:
    now = now_ms()
    runs = history(now)
    states = [
        JobState("etl", paused=True, last_fire_at=now - 1000, consecutive_failures=0, last_run_id=8),
        JobState("mail", last_fire_at=None, skipped_fires=4, last_skipped_at=now - 500, consecutive_failures=2),
    ]
    keys = [IdempotencyKey("etl", "deploy-4711", 1, now), IdempotencyKey("mail", "ключ", 7, now - 40_000)]
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.write(runs, job_states=states, keys=keys)
    finally:
        await store.close()
    return runs, states, keys


def sqlite_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


def pg_rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with connect_sync(dsn) as conn:
        return conn.execute(query).fetchall()


def assert_same_history(path: Path, dsn: str) -> None:
    """Row by row, column by column (PostgreSQL's text holds no NUL: U+FFFD stands for it)."""
    source = sqlite_rows(path, f"SELECT {RUNS} FROM runs ORDER BY id")
    target = pg_rows(dsn, f"SELECT {RUNS} FROM runs ORDER BY id")
    assert len(target) == len(source)
    for ours, theirs in zip(source, target, strict=True):
        expected = tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in ours)
        assert theirs == expected
    states = sqlite_rows(
        path,
        "SELECT job, paused, last_fire_at, skipped_fires, last_skipped_at, consecutive_failures, last_run_id FROM job_state ORDER BY job",
    )
    assert pg_rows(
        dsn,
        "SELECT job, paused, last_fire_at, skipped_fires, last_skipped_at, consecutive_failures, last_run_id FROM job_state ORDER BY job",
    ) == [(job, bool(paused), *rest) for job, paused, *rest in states]
    keys = "SELECT job, key, run_id, created_at FROM idempotency ORDER BY job, key"
    assert pg_rows(dsn, keys) == sqlite_rows(path, keys)


async def test_copy_store_moves_every_run_state_and_key(tmp_path: Path, fresh_db: str) -> None:
    path = tmp_path / "jobd.db"
    runs, states, _ = await write_sqlite_history(path)
    result = jobd("copy-store", "--from", str(path), "--to-env", "TARGET", env={"TARGET": with_password(fresh_db)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path} -> {redact_url(with_password(fresh_db))}"
    assert lines[1].startswith(f"schema at version {len(MIGRATIONS)} (applied: 1")
    assert lines[2] == f"copied {len(runs)} runs, 2 job states, 2 idempotency keys, 1 last cron fires"
    assert lines[3] == f"new runs are numbered from {max(r.id for r in runs) + 1}"
    assert lines[4] == f"run logs stay in {tmp_path / 'logs'} (see docs/cluster.md)"
    assert "s3cret" not in result.stdout + result.stderr

    assert_same_history(path, fresh_db)
    # Read back as runs by the cluster store, they are the runs jobd wrote.
    conn = await connect(fresh_db)
    try:
        for run in runs[:7]:
            copied = await get_run(conn, run.id)
            assert copied is not None
            if run.log_tail and "\x00" in run.log_tail:
                run.log_tail = run.log_tail.replace("\x00", "\ufffd")
            assert copied == run
    finally:
        await conn.close()
    with connect_sync(fresh_db) as db:
        # The run left PROCESSING belongs to no live node: the reaper takes it over with its token.
        owned = db.execute(
            "SELECT id, node, claim_token IS NOT NULL FROM runs WHERE claim_token IS NOT NULL OR node IS NOT NULL"
        ).fetchall()
        assert owned == [(2, None, True)]
        assert db.execute("SELECT job, scheduled_for, node, run_id FROM fires").fetchall() == [
            ("etl", states[0].last_fire_at, "copy-store", None)
        ]
        assert db.execute("SELECT nextval('runs_id_seq')").fetchone() == (max(r.id for r in runs) + 1,)
    # The source is free again: a daemon may open it.
    store = SQLiteStore(path)
    await store.open()
    await store.close()

    again = jobd("copy-store", "--from", str(path), "--to", fresh_db)
    assert again.returncode == 2
    assert again.stderr == (
        f"jobd: copy-store: the target already holds {len(runs)} runs, 2 job states, 2 idempotency keys, "
        "1 fire records; copy-store fills an empty store only\n"
    )


async def test_a_copy_that_fails_half_way_leaves_the_target_empty(tmp_path: Path, fresh_db: str) -> None:
    path = tmp_path / "jobd.db"
    runs, _, _ = await write_sqlite_history(path)
    with sqlite3.connect(path) as db:  # a value PostgreSQL refuses, late in the copy
        db.execute("UPDATE runs SET exit_code = 'not a number' WHERE id = ?", (runs[-1].id,))
    result = jobd("copy-store", "--from", str(path), "--to", fresh_db)
    assert result.returncode == 1
    assert result.stderr.startswith("jobd: copy-store: ") and result.stderr.count("\n") == 1, result.stderr
    assert counts(fresh_db) == (0, 0, 0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET exit_code = NULL WHERE id = ?", (runs[-1].id,))
    assert jobd("copy-store", "--from", str(path), "--to", fresh_db).returncode == 0
    assert counts(fresh_db) == (len(runs), 2, 2)


async def test_copy_store_refuses_a_store_a_running_jobd_holds_then_copies_its_history(
    tmp_path: Path, fresh_db: str
) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text(
        '[server]\nport = 0\n[store]\npath = "state/jobd.db"\n[workers]\nshutdown_grace_s = 5\n'
        '[jobs.echo]\nshell = "echo ::result::{\\"ok\\": true}; echo hello $JOBD_PARAM_WHO"\n'
        '[jobs.fails]\nshell = "echo oops >&2; exit 4"\n'
    )
    path = tmp_path / "state" / "jobd.db"
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        async with aiohttp.ClientSession() as http:
            ids = []
            for job, body, headers in (
                ("echo", {"params": {"who": "world"}}, {"Idempotency-Key": "first"}),
                ("echo", {"params": {"who": "again"}, "overlap": "queue"}, {}),
                ("fails", {}, {}),
            ):
                async with http.post(f"{url}/api/v1/jobs/{job}/trigger", json=body, headers=headers) as response:
                    assert response.status == 202, await response.text()
                    ids.append((await response.json())["run"]["id"])
            async with http.post(f"{url}/api/v1/jobs/fails/pause") as response:
                assert response.status == 200

            async def all_ended() -> bool:
                async with http.get(f"{url}/api/v1/runs?limit=10") as response:
                    listed = (await response.json())["runs"]
                return len(listed) == 3 and all(r["status"] in ("COMPLETED", "FAILED") for r in listed)

            await wait_for(all_ended, timeout=30, interval=0.05)
        assert daemon.proc is not None
        refused = await asyncio.to_thread(jobd, "copy-store", "--from", str(path), "--to", fresh_db)
        assert refused.returncode == 2
        assert refused.stderr == (
            f"jobd: copy-store: {path} is in use by a running jobd (pid {daemon.proc.pid}): "
            "stop it first, so that the copy holds its last run\n"
        )
        assert await daemon.stop() == 0
    finally:
        await daemon.cleanup()
    with psycopg.connect(fresh_db) as conn:  # nothing was written to the target
        assert conn.execute("SELECT to_regclass('runs')").fetchone() == (None,)
    result = jobd("copy-store", "--from", str(path), "--to", fresh_db)
    assert result.returncode == 0, result.stderr
    assert "copied 3 runs, 2 job states, 1 idempotency keys, 0 last cron fires" in result.stdout
    assert_same_history(path, fresh_db)
    assert pg_rows(fresh_db, "SELECT job, paused FROM job_state WHERE job = 'fails'") == [("fails", True)]


def test_copy_store_refusals(tmp_path: Path) -> None:
    missing = jobd("copy-store", "--from", str(tmp_path / "nope.db"), "--to", "postgresql://db/jobd")
    assert (missing.returncode, missing.stderr) == (2, f"jobd: copy-store: {tmp_path / 'nope.db'}: no such file\n")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    result = jobd("copy-store", "--from", str(junk), "--to", "postgresql://db/jobd")
    assert result.returncode == 2 and result.stderr.startswith(f"jobd: copy-store: {junk}: not a jobd store")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = jobd("copy-store", "--from", str(empty), "--to", "postgresql://db/jobd")
    assert (result.returncode, result.stderr) == (2, f"jobd: copy-store: {empty}: not a jobd store (no schema)\n")
    result = jobd("copy-store", "--from", str(empty), "--to", "mysql://root:pw@db/jobd")
    assert (result.returncode, result.stderr) == (
        2,
        "jobd: copy-store: --to: 'mysql://root:***@db/jobd' must start with postgresql:// or postgres://\n",
    )
    result = jobd("copy-store", "--from", str(empty), "--to-env", "JOBD_NO_SUCH_VARIABLE")
    assert (result.returncode, result.stderr) == (
        2,
        "jobd: copy-store: --to-env: environment variable JOBD_NO_SUCH_VARIABLE is not set\n",
    )
    both = jobd("copy-store", "--from", str(empty), "--to", "postgresql://db/x", "--to-env", "X")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
