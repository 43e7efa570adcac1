"""The dashboard of a cluster in headless Chromium: real `jobd serve` nodes on one PostgreSQL."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest
from conftest import wait_for
from test_browser import WAIT_MS, Browser, browser, expect, shot, watch_console
from test_cluster_ops import JOBS
from test_cluster_processes import nodes, query

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the fixture, shared with test_browser.py


async def test_the_dashboard_shows_the_nodes_and_where_each_run_ran(
    browser: Browser, tmp_path: Path, pg_db: str
) -> None:
    async with nodes(tmp_path, pg_db, 2, JOBS) as daemons, aiohttp.ClientSession() as http:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch_console(page)
        await page.goto(f"{daemons[0].url}/")
        panel = page.locator("section.nodes")
        await expect(panel.locator("tbody tr")).to_have_count(2, timeout=WAIT_MS)
        for name in ("node0", "node1"):
            await expect(panel.locator(f'tr[data-node="{name}"]')).to_contain_text("alive")
        await expect(panel.locator('tr[data-node="node0"]')).to_contain_text("serving this page")

        body = {"params": {"lines": 8, "pause": 0.25}}
        async with http.post(f"{daemons[0].url}/api/v1/jobs/talk/trigger", json=body) as resp:
            run_id = (await resp.json())["run"]["id"]
        started = "SELECT node FROM runs WHERE id = %s AND status = 'PROCESSING'"
        owner = await wait_for(lambda: (query(pg_db, started, run_id) or [(None,)])[0][0])
        elsewhere = daemons[1] if owner == "node0" else daemons[0]
        # The run's page on the node that does not execute it: its log, relayed, live.
        await page.goto(f"{elsewhere.url}/#/runs/{run_id}")
        await expect(page.locator("pre.log")).to_contain_text(f"line 7 of run {run_id}", timeout=WAIT_MS)
        await expect(page.locator(".run-status [data-status]")).to_have_text("COMPLETED")
        await expect(page.locator("pre.log")).to_contain_text(f"line 0 of run {run_id}")
        await expect(page.locator("dl.facts")).to_contain_text(f"Node{owner}")
        await shot(page, "cluster-run")
        await page.goto(f"{elsewhere.url}/#/runs")
        await expect(page.locator(f'tr[data-run-id="{run_id}"] td.node')).to_have_text(owner)

        # A node that stops answering turns dead in the panel, which refreshes by itself.
        await page.goto(f"{daemons[0].url}/#/overview")
        await expect(panel.locator("tbody tr")).to_have_count(2, timeout=WAIT_MS)
        await shot(page, "cluster-overview")
        daemons[1].signal(signal.SIGSTOP)
        try:
            await expect(panel.locator('tr[data-node="node1"]')).to_contain_text("dead", timeout=WAIT_MS)
        finally:
            daemons[1].signal(signal.SIGCONT)
        assert errors == []
