"""The overview's table of shared concurrency groups, in headless Chromium against a real
`jobd serve` (the browser fixture of test_browser.py)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from process import DaemonProcess
from test_browser import Api, browser, watch_console  # noqa: F401 (browser is a fixture)

try:
    from playwright.async_api import Browser, expect
except ImportError:  # pragma: no cover - the browser fixture reports it
    Browser = object  # type: ignore[assignment,misc]


def config(tmp_path: Path, gate: Path) -> Path:
    path = tmp_path / "jobd.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
[store]
path = "state/jobd.db"
[workers]
concurrency = 4
shutdown_grace_s = 2
kill_grace_s = 0.5
[groups.db]
max_concurrency = 1
[jobs.load]
shell = 'while [ ! -e "{gate}" ]; do sleep 0.05; done'
overlap = "allow"
max_concurrency = 5
groups = ["db"]
""")
    return path


async def test_the_overview_shows_each_group_live(browser: Browser, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    daemon = DaemonProcess(config(tmp_path, gate))
    await daemon.start()
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch_console(page)
        await page.goto(f"{daemon.url}/")
        await expect(page.locator("#overview-title")).to_be_visible()
        await expect(page.locator("section.groups")).to_be_visible()
        await expect(page.locator('[data-running="db"]')).to_have_text("0 / 1")
        async with aiohttp.ClientSession() as http:
            api = Api(http, daemon.url)
            for _ in range(3):
                await api.call("POST", "/jobs/load/trigger")
            # One runs, two wait for the group's slot: the page follows without a reload.
            await expect(page.locator('[data-running="db"]')).to_have_text("1 / 1")
            await expect(page.locator('[data-waiting="db"]')).to_have_text("2")
            await expect(page.locator('tr[data-group="db"]')).to_contain_text("load")
            gate.touch()
            await api.finished_runs("load", 3)
            await expect(page.locator('[data-running="db"]')).to_have_text("0 / 1")
            await expect(page.locator('[data-waiting="db"]')).to_have_text("0")
        assert errors == []
    finally:
        gate.touch()
        await daemon.cleanup()
