"""The dashboard's Jobs page shows why a job paused itself (pause_after_failures)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from conftest import wait_for
from process import DaemonProcess
from test_browser import WAIT_MS, Api, browser  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

try:
    from playwright.async_api import Browser, expect
except ImportError:  # pragma: no cover - the browser fixture reports it
    pass


async def test_a_job_paused_after_failures_says_why(browser: Browser, tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text(
        '[server]\nport = 0\n[store]\npath = "state/jobd.db"\n'
        '[jobs.breaks]\nshell = "exit 1"\npause_after_failures = 2\n'
        '[jobs.fine]\nshell = "true"\n'
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, daemon.url)
            for _ in range(2):
                await api.call("POST", "/jobs/breaks/trigger", json={})
                await api.finished_runs("breaks", _ + 1)

            async def paused() -> bool:
                return bool((await api.call("GET", "/jobs/breaks"))["job"]["paused"])

            await wait_for(paused, timeout=WAIT_MS / 1000, interval=0.05)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{daemon.url}/#/jobs")
            badge = page.locator('article[data-job="breaks"] .badge.paused')
            await expect(badge).to_have_text("paused (failures)", timeout=WAIT_MS)
            await expect(badge).to_have_attribute(
                "title", "paused after 2 consecutive failures (pause_after_failures 2)"
            )
            await expect(page.locator('article[data-job="fine"] .badge.paused')).to_have_count(0)
    finally:
        await daemon.cleanup()
