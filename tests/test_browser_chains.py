"""The run page shows a run's chain, in headless Chromium against a real `jobd serve` on each
backend: the runs its end triggered (and the one its overlap policy skipped), and from a child,
a link back to its parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BACKENDS, wait_for
from process import DaemonProcess
from test_browser import WAIT_MS, Browser, browser, expect, shot, watch_console

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("backend", BACKENDS, indirect=True)]
__all__ = ["browser"]  # the fixture, shared with test_browser.py

JOBS = """
[jobs.extract]
shell = "echo extracted; echo '::result::{{\\"rows\\": 3}}'"
on_success = ["load", "busy"]
[jobs.load]
shell = "echo loading; while [ ! -e {gate} ]; do sleep 0.05; done"
chain_params = {{ target = "warehouse" }}
[jobs.busy]
command = ["sleep", "40"]
"""


async def test_the_run_page_shows_the_chain(browser: Browser, tmp_path: Path, store_toml: str) -> None:
    config = tmp_path / "jobd.toml"
    gate = tmp_path / "gate"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n{store_toml}[workers]\nkill_grace_s = 0.5\n{JOBS.format(gate=gate)}'
    )
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str) -> Any:
                async with http.request(method, f"{url}/api/v1{path}") as response:
                    assert response.status < 300, await response.text()
                    return await response.json()

            busy = (await call("POST", "/jobs/busy/trigger"))["run"]["id"]
            await wait_for(lambda: call("GET", f"/runs/{busy}"), timeout=WAIT_MS / 1000)

            async def processing() -> bool:
                return bool((await call("GET", f"/runs/{busy}"))["run"]["status"] == "PROCESSING")

            await wait_for(processing, timeout=WAIT_MS / 1000, interval=0.05)
            extract = (await call("POST", "/jobs/extract/trigger"))["run"]["id"]

            async def load_running() -> int | None:
                children = (await call("GET", f"/runs/{extract}"))["run"]["children"]
                running = children and children[0]["status"] == "PROCESSING"
                return int(children[0]["id"]) if running else None

            load = await wait_for(load_running, timeout=WAIT_MS / 1000, interval=0.05)

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch_console(page)
        await page.goto(f"{url}/#/runs/{extract}")
        chain = page.locator("section.run-chain")
        await expect(chain).to_be_visible(timeout=WAIT_MS)
        children = chain.locator("ul.chain-children li")
        await expect(children).to_have_count(2)
        await expect(children.nth(0)).to_contain_text(f"#{load} load")
        await expect(children.nth(0).locator("[data-status]")).to_have_text("PROCESSING")
        gate.touch()  # the child ends: the parent's page shows it, live
        await expect(children.nth(0).locator("[data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
        await expect(children.nth(1)).to_contain_text(f"busy skipped: job 'busy' already has run {busy} PROCESSING")
        await expect(chain.locator(".chain-parent")).to_have_count(0)
        await shot(page, "run-chain-parent")

        await children.nth(0).locator("a").click()
        await expect(page.locator("#run-title")).to_have_text(f"Run #{load} · load", timeout=WAIT_MS)
        await expect(chain.locator(".chain-parent")).to_have_text(f"Triggered by the end of run #{extract}")
        await expect(page.locator("dl.facts")).to_contain_text("Triggered bychain")
        await expect(page.locator("dl.facts")).to_contain_text('"target":"warehouse"')
        await shot(page, "run-chain-child")
        await chain.locator(".chain-parent a").click()
        await expect(page.locator("#run-title")).to_have_text(f"Run #{extract} · extract", timeout=WAIT_MS)

        # A run with no chain shows no chain section.
        await page.goto(f"{url}/#/runs/{busy}")
        await expect(page.locator("#run-title")).to_have_text(f"Run #{busy} · busy", timeout=WAIT_MS)
        await expect(chain).to_be_hidden()
        assert errors == []
    finally:
        await daemon.cleanup()
