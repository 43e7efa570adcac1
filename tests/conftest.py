"""Shared fixtures: a real daemon on a real SQLite file in tmp_path, served over loopback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.app import Daemon
from jobd.config import Config, parse_config
from jobd.models import Run, RunStatus
from jobd.web import create_app

# A throwaway PostgreSQL server for the tests that need one (see tests/postgres.py).
pytest_plugins = ["tests.postgres"]

TESTS = Path(__file__).parent
SCRIPTS = TESTS / "scripts"
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def fresh_releases() -> Iterator[None]:
    """Run ids start at 1 again in every test's store, and an asyncio.Event belongs to the event
    loop that first waited on it: a release left by an earlier test would fail a later run."""
    import sched_jobs

    yield
    sched_jobs.releases.clear()


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll a cheap in-process condition until it holds, or fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def pg_url(dsn: str) -> str:
    """A keyword DSN (the PostgreSQL fixtures') as the URL `[store] url` takes."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    return f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The run backend the daemon of a test uses: "sqlite" unless a module parametrizes it
    (`pytest.mark.parametrize("backend", BACKENDS, indirect=True)`)."""
    return getattr(request, "param", "sqlite")


BACKENDS = ["sqlite", "postgresql"]


def sqlite_only(backend: str, why: str) -> None:
    """For a test of the single-node backend's own parts, in a module run on both backends."""
    if backend != "sqlite":
        pytest.skip(f"single-node backend only: {why}")


@pytest.fixture
def store_toml(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> str:
    """The store of a `jobd serve` config file for the backend, as TOML: SQLite's file under
    tmp_path/state, or a fresh PostgreSQL database with a fixed node name, so that a node started
    again after a crash is the same node and finds the runs it left at start."""
    if backend == "postgresql":
        pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")
        url = pg_url(request.getfixturevalue("pg_db"))
        return f'[store]\nurl = "{url}"\n[cluster]\nnode_name = "node1"\n'
    return f'[store]\npath = "{tmp_path / "state" / "jobd.db"}"\n'


@pytest.fixture
def make_config(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Callable[..., Config]:
    store: dict[str, Any] = {"path": str(tmp_path / "state" / "jobd.db")}
    if backend == "postgresql":
        pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")
        store = {"url": pg_url(request.getfixturevalue("pg_db"))}

    def make(jobs: dict[str, Any] | None = None, **sections: Any) -> Config:
        raw: dict[str, Any] = {
            "store": dict(store),
            "workers": {"shutdown_grace_s": 2.0, "kill_grace_s": 0.5},
        }
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        raw["jobs"] = jobs or {}
        return parse_config(raw, environ={}, base_dir=tmp_path)

    return make


class Harness:
    """A running daemon with an HTTP client bound to it."""

    def __init__(self, client: Any, daemon: Daemon) -> None:
        self.client = client
        self.daemon = daemon

    async def trigger(
        self,
        job: str,
        params: dict[str, Any] | None = None,
        *,
        expect: int = 202,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"/api/v1/jobs/{job}/trigger", json={"params": params or {}, **body}, headers=headers
        )
        data = await response.json()
        assert response.status == expect, data
        return data.get("run", data)

    async def finished(self, run_id: int, timeout: float = 15.0) -> Run:
        """Wait until the run is terminal (event-driven), then return its stored copy."""
        run = await self.daemon.runs.get(run_id)
        async with asyncio.timeout(timeout):
            await self.daemon.runs.wait_finished(run)
        stored = await self.daemon.store.get_run(run_id)
        assert stored is not None
        return stored

    async def get_json(self, path: str, expect: int = 200) -> Any:
        response = await self.client.get(path)
        assert response.status == expect, await response.text()
        return await response.json()

    async def status_of(self, run_id: int) -> RunStatus:
        return (await self.daemon.runs.get(run_id)).status


@pytest.fixture
def start_daemon(aiohttp_client: Any, make_config: Callable[..., Config]) -> Callable[..., Awaitable[Harness]]:
    async def start(jobs: dict[str, Any] | None = None, *, config: Config | None = None, **sections: Any) -> Harness:
        daemon = Daemon(config or make_config(jobs, **sections), environ={"PATH": "/usr/bin:/bin"})
        client = await aiohttp_client(create_app(daemon))
        return Harness(client, daemon)

    return start
