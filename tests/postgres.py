"""PostgreSQL for the tests (a pytest plugin): a throwaway cluster per pytest run, or the server
named by JOBD_TEST_PG_DSN; a fresh database per test module.

The server itself is started by tests/pgserver.py (shared with the benchmark suite), from the
server binaries on PATH or under /usr/lib/postgresql/*/bin, as an unprivileged user when run as
root, fsync off. Without binaries or a DSN the tests that need PostgreSQL are skipped, with one
line in the summary saying why; under CI=true that is a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pgserver import LocalCluster, PgServer, open_server

DSN_ENV = "JOBD_TEST_PG_DSN"
_unavailable_key = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    server = open_server((DSN_ENV,))
    if isinstance(server, str):
        request.config.stash[_unavailable_key] = server
        if os.environ.get("CI") == "true":
            pytest.fail(server, pytrace=False)
        pytest.skip(server)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for this test module."""
    name = pg_server.create_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_restartable(pg_server: PgServer) -> Iterator[PgServer]:
    """The server, for a test that stops and starts it; started again if the test left it down."""
    if not isinstance(pg_server, LocalCluster):
        pytest.skip("stopping PostgreSQL needs the throwaway cluster, not an external server")
    try:
        yield pg_server
    finally:
        if not pg_server.running:
            pg_server.start()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    reason = config.stash.get(_unavailable_key, None)
    if reason is not None:
        terminalreporter.write_line(f"{reason}; the tests that need it were skipped", yellow=True)


@pytest.fixture(scope="module")
def pg_migrated(pg_dsn: str) -> str:
    """This module's database with jobd's schema."""
    from jobd.store.postgres import connect_sync
    from jobd.store.postgres.schema import migrate_sync

    with connect_sync(pg_dsn) as conn:
        migrate_sync(conn)
    return pg_dsn


@pytest.fixture
def pg_db(pg_migrated: str) -> str:
    """This module's database with jobd's schema, emptied for the test."""
    from jobd.store.postgres import connect_sync

    with connect_sync(pg_migrated) as conn:
        conn.execute(
            "TRUNCATE runs, job_state, idempotency, fires, nodes, events, notifications, audit RESTART IDENTITY"
        )
    return pg_migrated
