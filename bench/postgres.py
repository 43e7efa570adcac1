"""The PostgreSQL of the cluster scenarios, and what it spends.

One server per bench run, started on first use: a throwaway cluster (tests/pgserver.py, as the
tests start theirs, but with PostgreSQL's durable defaults: fsync and synchronous_commit on), or
the server named by JOBD_BENCH_PG_DSN or JOBD_TEST_PG_DSN. Each scenario gets a fresh database.

What the server spends is read three ways. CPU: the user + system time of the postmaster and its
children from /proc, the postmaster's cutime/cstime holding the backends that have exited (only
for the throwaway cluster, whose processes are ours to see). Statements: pg_stat_statements,
preloaded in the throwaway cluster (and used on an external server if it is loaded there), its
calls in the scenario's database. Transactions: pg_stat_database's xact_commit + xact_rollback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import conninfo, sql

from tests.pgserver import LocalCluster, PgServer, find_bindir, open_server, unavailable

DSN_ENVS = ("JOBD_BENCH_PG_DSN", "JOBD_TEST_PG_DSN")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A backend flushes its pending statistics (pg_stat_database) about a second after it goes idle.
STATS_FLUSH_S = 1.5


def why_unavailable() -> str | None:
    return unavailable(DSN_ENVS)


def settings() -> dict[str, str]:
    """The throwaway cluster's settings: the defaults (durable commits) and pg_stat_statements
    when the server has it."""
    chosen = {"max_connections": "200"}
    bindir = find_bindir()
    if bindir is not None and (bindir.parent / "lib" / "pg_stat_statements.so").exists():
        chosen["shared_preload_libraries"] = "pg_stat_statements"
        chosen["pg_stat_statements.track_utility"] = "on"
    return chosen


def as_url(dsn: str) -> str:
    """A DSN (keywords or URL) as the URL `[store] url` takes."""
    info = conninfo.conninfo_to_dict(dsn)
    user = quote(str(info.get("user", "postgres")), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"postgresql://{auth}@{host}:{port}/{quote(str(info['dbname']), safe='')}"


def _proc_cpu_ticks(pid: int) -> tuple[int, int]:
    """(own + reaped children's CPU ticks, parent pid) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]), int(fields[1])


@dataclasses.dataclass(frozen=True, slots=True)
class Counters:
    """The server's transactions and statements in the database so far (statements: None
    without pg_stat_statements)."""

    transactions: int
    statements: int | None


def _shorten(query: str, head: int = 100, tail: int = 200) -> str:
    """A statement short enough to read: its start and its end (where FROM and WHERE are)."""
    return query if len(query) <= head + tail + 5 else f"{query[:head]} … {query[-tail:]}"


class Database:
    """A fresh database of the bench's server, with its spending counters."""

    def __init__(self, server: PgServer, name: str) -> None:
        self.server = server
        self.name = name
        self.dsn = server.dsn(name)
        self.url = as_url(self.dsn)
        self.statements = False

    def setup(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT count(*) FROM pg_stat_statements")
                self.statements = True
            except psycopg.Error:
                self.statements = False  # not preloaded on this server: transactions only

    def cpu_s(self) -> float | None:
        """CPU seconds of the whole server (postmaster and children, exited ones included)."""
        if not isinstance(self.server, LocalCluster):
            return None
        postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])
        ticks, _ = _proc_cpu_ticks(postmaster)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                used, parent = _proc_cpu_ticks(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if parent == postmaster:
                ticks += used
        return ticks / CLOCK_TICKS

    def _counters(self) -> Counters:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            transactions = int(row[0]) if row else 0
            statements = None
            if self.statements:
                row = conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND query NOT LIKE '%pg_stat%'"
                ).fetchone()
                statements = int(row[0]) if row else 0
        return Counters(transactions, statements)

    async def counters(self) -> Counters:
        """The counters once the backends have flushed their statistics (call it when the
        work to count is done: what the nodes do meanwhile, polls and heartbeats, counts too)."""
        await asyncio.sleep(STATS_FLUSH_S)
        return await asyncio.to_thread(self._counters)

    def _commit_ms(self, count: int) -> float:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (at bigint)")
            times = []
            for _ in range(count):
                started = time.perf_counter()
                conn.execute("INSERT INTO bench_commit_probe VALUES (1)")
                times.append((time.perf_counter() - started) * 1000)
            conn.execute("DROP TABLE bench_commit_probe")
        return statistics.median(times)

    async def commit_ms(self, count: int = 20) -> float:
        """The median time of a one-row insert committed on its own: what the server's durable
        commit (its WAL flush) costs on this machine at this moment."""
        return await asyncio.to_thread(self._commit_ms, count)

    def _top(self, limit: int, runs: int) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT query, calls, total_exec_time, rows FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND query NOT LIKE '%%pg_stat%%' ORDER BY total_exec_time DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [
            {
                "query": _shorten(" ".join(query.split())),
                "calls_per_run": round(calls / runs, 3),
                "total_ms": round(total, 1),
                "mean_ms": round(total / calls, 3) if calls else None,
                "us_per_run": round(total * 1000 / runs, 1),
                "rows": rows,
            }
            for query, calls, total, rows in rows
        ]

    async def top_statements(self, runs: int, limit: int = 8) -> list[dict[str, Any]]:
        """The statements by total execution time (inside the server) since the last reset."""
        if not self.statements:
            return []
        return await asyncio.to_thread(self._top, limit, runs)

    async def reset_statements(self) -> None:
        if self.statements:
            await asyncio.to_thread(self._execute, "SELECT pg_stat_statements_reset()")

    def _execute(self, query: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query)


class BenchPostgres:
    """The bench run's server, started on the first scenario that asks for a database."""

    def __init__(self) -> None:
        self._server: PgServer | None = None
        self._lock = asyncio.Lock()

    async def server(self) -> PgServer:
        async with self._lock:
            if self._server is None:
                opened = await asyncio.to_thread(open_server, DSN_ENVS, settings())
                if isinstance(opened, str):
                    raise RuntimeError(opened)
                self._server = opened
            return self._server

    async def database(self) -> Database:
        server = await self.server()
        name = await asyncio.to_thread(server.create_database, "jobd_bench")
        database = Database(server, name)
        await asyncio.to_thread(database.setup)
        return database

    async def drop(self, database: Database) -> None:
        await asyncio.to_thread(database.server.drop_database, database.name)

    def describe(self) -> dict[str, Any]:
        """The server as the report names it."""
        if self._server is None:
            return {}
        with psycopg.connect(self._server.admin_dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            names = ("fsync", "synchronous_commit", "shared_buffers", "max_connections", "shared_preload_libraries")
            shown = {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone() for name in names}
        return {
            "version": version[0] if version else None,
            "throwaway": isinstance(self._server, LocalCluster),
            **{name: row[0] if row else None for name, row in shown.items()},
        }

    def close(self) -> None:
        if self._server is not None:
            self._server.destroy()
            self._server = None
