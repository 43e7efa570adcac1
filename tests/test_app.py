"""The composition root: services start in order and stop in reverse, a failed start stops what
did start, and a reload applies a new config's jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from jobd.app import Daemon
from jobd.config import load_config
from jobd.store import SQLiteStore, StoreLocked
from jobd.web import create_app

NOOP = {"handler": "sample_jobs:noop", "schedule": "0 * * * *"}


async def test_services_start_in_order_and_stop_in_reverse(make_config, aiohttp_client) -> None:
    daemon = Daemon(make_config({"tick": NOOP}), environ={})
    client = await aiohttp_client(create_app(daemon))
    assert daemon.ready and not daemon.stopping
    assert daemon.scheduler is not None and daemon.runs.next_run_at("tick") is not None
    assert daemon.retention.running and daemon.pool.busy == 0
    await client.close()
    assert daemon.stopping and not daemon.ready and daemon.closed
    assert not daemon.retention.running
    # The store is closed and its lock released: another process may open it now.
    store = SQLiteStore(daemon.config.store.path)
    await store.open()
    await store.close()


async def test_a_failed_start_stops_what_did_start(make_config) -> None:
    daemon = Daemon(make_config({"tick": NOOP}), environ={})
    app = create_app(daemon)

    async def refuses(app: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield

    app.cleanup_ctx.append(refuses)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="cannot start"):
        await runner.setup()
    await runner.cleanup()  # as serve() does
    assert daemon.closed and not daemon.retention.running
    store = SQLiteStore(daemon.config.store.path)
    await store.open()
    await store.close()


async def test_a_second_daemon_on_the_same_store_does_not_start(make_config, aiohttp_client) -> None:
    config = make_config({"tick": NOOP})
    first = Daemon(config, environ={})
    await aiohttp_client(create_app(first))
    second = Daemon(config, environ={})
    runner = web.AppRunner(create_app(second))
    with pytest.raises(StoreLocked):
        await runner.setup()
    await runner.cleanup()
    assert not second.ready and first.ready


async def test_reload_reads_the_file_and_applies_its_jobs(make_config, aiohttp_client, tmp_path) -> None:
    path = tmp_path / "jobd.toml"
    store = f'[store]\npath = "{tmp_path / "state" / "jobd.db"}"\n'
    path.write_text(store + '[jobs.a]\nhandler = "sample_jobs:noop"\n')
    daemon = Daemon(load_config(path, environ={}), environ={})
    await aiohttp_client(create_app(daemon))
    path.write_text(store + '[jobs.b]\nhandler = "sample_jobs:noop"\n[server]\nport = 1\n')
    assert await daemon.reload()
    assert list(daemon.runs.jobs) == ["b"] and list(daemon.config.jobs) == ["b"]
    assert daemon.config.server.port != 1  # server settings need a restart
    path.write_text("[jobs.c]\nschedule = 'never'\n")
    assert not await daemon.reload()  # refused: the running config stays
    assert list(daemon.runs.jobs) == ["b"]
