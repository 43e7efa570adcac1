"""`migrate` brings a PostgreSQL store's schema up to date (nodes also do it when they start);
`copy-store` moves a single node's history into one (jobd/cli/copy_store.py)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from jobd.cli.config_commands import load
from jobd.cli.copy_store import CopyRefused, copy_store, hold_source, open_source
from jobd.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from jobd.dburl import redact_url, scrub, url_problem
from jobd.store import StoreError
from jobd.store.postgres import connect_sync
from jobd.store.postgres.schema import LOCK_MIGRATE, migrate_sync

CONNECT_TIMEOUT_S = 10


def one_line(exc: BaseException, url: str) -> str:
    """A driver's error as one line, the URL's password hidden."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return scrub(text, url)


def migrate_schema(conn: psycopg.Connection[TupleRow]) -> tuple[int, int]:
    """The schema version before and after. The migration lock is taken first and held around
    migrate_sync() (advisory locks nest), so `before` is what this call found, not a version
    another node was writing at the same moment."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_MIGRATE)
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        before = 0
        if row and row[0]:
            found = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_version").fetchone()
            before = int(found[0]) if found else 0
        after = migrate_sync(conn)
    return before, after


def describe_migration(before: int, after: int) -> str:
    if before == after:
        return f"schema at version {after}, up to date"
    applied = ", ".join(str(n) for n in range(before + 1, after + 1))
    return f"schema at version {after} (applied: {applied})"


def cmd_migrate(args: argparse.Namespace) -> int:
    config = load(args.config, sys.stderr)
    if config is None:
        return EXIT_USAGE
    store = config.store
    if store.url is None:
        print(f"{store.describe()}: a SQLite store migrates itself when jobd starts; nothing to do")
        return EXIT_OK
    try:
        with connect_sync(store.url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            before, after = migrate_schema(conn)
    except (psycopg.Error, StoreError) as exc:
        print(f"jobd: cannot migrate {store.describe()}: {one_line(exc, store.url)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{redact_url(store.url)}: {describe_migration(before, after)}")
    return EXIT_OK


def _target_url(args: argparse.Namespace) -> tuple[str | None, str]:
    """The target URL, or None and why not."""
    if args.to_env is not None:
        url = os.environ.get(args.to_env, "")
        if not url:
            return None, f"--to-env: environment variable {args.to_env} is not set"
        problem = url_problem(url)
        return (None, f"--to-env: the value of {args.to_env} {problem}") if problem else (url, "")
    url = str(args.to)
    problem = url_problem(url)
    return (None, f"--to: {redact_url(url)!r} {problem}") if problem else (url, "")


def cmd_copy_store(args: argparse.Namespace) -> int:
    url, problem = _target_url(args)
    if url is None:
        print(f"jobd: copy-store: {problem}", file=sys.stderr)
        return EXIT_USAGE
    source = Path(args.source)
    try:
        with hold_source(source):
            db = open_source(source)
            try:
                with connect_sync(url, connect_timeout=CONNECT_TIMEOUT_S) as pg:
                    before, after = migrate_schema(pg)
                    copied = copy_store(db, pg)
            finally:
                db.close()
    except CopyRefused as exc:
        print(f"jobd: copy-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (psycopg.Error, StoreError, sqlite3.Error) as exc:
        print(f"jobd: copy-store: {one_line(exc, url)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{source} -> {redact_url(url)}")
    print(describe_migration(before, after))
    print(
        f"copied {copied.runs} runs, {copied.job_states} job states, {copied.idempotency_keys} idempotency keys, "
        f"{copied.fires} last cron fires"
    )
    if copied.last_run_id is not None:
        print(f"new runs are numbered from {copied.last_run_id + 1}")
    print(f"run logs stay in {source.parent / 'logs'} (see docs/cluster.md)")
    return EXIT_OK
