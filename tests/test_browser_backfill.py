"""The backfill form of a job's card in headless Chromium against a real `jobd serve`: a preview
that lists the fire times (those the job's calendars exclude marked), errors from the problem+json,
and a backfill whose runs are created. From and to are typed in the job's zone (Europe/Berlin),
which is not the browser's (Chromium runs in UTC here)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from process import DaemonProcess
from test_browser import WAIT_MS, Api, Browser, browser, expect, shot, watch_console

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the fixture, shared with test_browser.py

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
[store]
path = "state/jobd.db"
[workers]
shutdown_grace_s = 0.5
kill_grace_s = 0.5
[calendars.weekend]
weekdays = ["sat", "sun"]
[calendars.holidays]
dates = ["2026-03-04"]
[jobs.noon]
description = "Noon in Berlin, not on weekends or holidays"
shell = "echo noon"
schedule = "0 12 * * *"
timezone = "Europe/Berlin"
overlap = "allow"
max_concurrency = 5
exclude = ["weekend", "holidays"]
[jobs.by-hand]
shell = "echo by hand"
"""


async def test_preview_and_backfill_from_the_jobs_page(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "jobd.toml"
    path.write_text(CONFIG)
    daemon = DaemonProcess(path)
    try:
        await daemon.start()
        page = await browser.new_page(viewport={"width": 1280, "height": 1000}, timezone_id="UTC")
        errors = watch_console(page)
        await page.goto(f"{daemon.url}/#/jobs")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        # A job without a schedule has nothing to backfill.
        await expect(page.locator('article[data-job="by-hand"] details.backfill')).to_have_count(0)

        card = page.locator('article[data-job="noon"]')
        await card.locator("details.backfill summary").click()
        # 12:00 in Berlin is 11:00 UTC: read in the browser's zone, the first fire would be left out.
        await card.get_by_label("From (Europe/Berlin, included)").fill("2026-03-02T12:00:00")
        await card.get_by_label("To (Europe/Berlin, not included)").fill("2026-03-09T12:00:00")
        await card.get_by_label("Max runs (1–1000)").fill("3")
        await card.get_by_role("button", name="Preview").click()
        # Four fire times, and more than max_runs: the problem's detail and field are shown.
        alert = card.locator(".backfill-result [role=alert]")
        await expect(alert).to_contain_text("more than max_runs=3", timeout=WAIT_MS)
        await expect(alert).to_contain_text("(max_runs)")

        await card.get_by_label("Max runs (1–1000)").fill("4")
        await card.get_by_role("button", name="Preview").click()
        times = card.locator(".backfill-times li")
        await expect(times).to_have_count(7, timeout=WAIT_MS)
        await expect(card.locator(".backfill-summary")).to_have_text("4 fire time(s) in Europe/Berlin, 3 excluded")
        assert [text.strip() for text in await times.all_inner_texts()] == [
            "2026-03-02 12:00:00+01:00",
            "2026-03-03 12:00:00+01:00",
            "2026-03-04 12:00:00+01:00 excluded (holidays)",
            "2026-03-05 12:00:00+01:00",
            "2026-03-06 12:00:00+01:00",
            "2026-03-07 12:00:00+01:00 excluded (weekend)",
            "2026-03-08 12:00:00+01:00 excluded (weekend)",
        ]
        await expect(card.locator(".backfill-times li.excluded")).to_have_count(3)
        await shot(page, "jobs-backfill-preview")
        async with aiohttp.ClientSession() as http:
            api = Api(http, daemon.url)
            assert (await api.call("GET", "/runs", params={"job": "noon"}))["runs"] == []  # a preview made nothing

            await card.get_by_role("button", name="Backfill").click()
            await expect(page.locator(".notice")).to_contain_text("Backfill of noon: 4 run(s) created", timeout=WAIT_MS)
            runs = await api.finished_runs("noon", 4)
            assert sorted(run["scheduled_for"] for run in runs) == [
                f"2026-03-0{day}T11:00:00.000Z" for day in (2, 3, 5, 6)
            ]
            assert {run["triggered_by"] for run in runs} == {"catchup"}
        # The answer stays on the card through the refreshes the runs' changes cause, with links.
        await expect(card.locator(".backfill-summary")).to_have_text("4 run(s) created")
        await expect(card.locator(".backfill-times a")).to_have_count(4)
        await expect(card.locator("details.backfill")).to_have_attribute("open", "")

        # A range reaching into the future is refused by the daemon: its words are shown.
        await card.get_by_label("To (Europe/Berlin, not included)").fill("2099-01-01T00:00:00")
        await card.get_by_role("button", name="Preview").click()
        await expect(alert).to_contain_text("to must not be in the future")
        await shot(page, "jobs-backfill-error")
        # The browser logs each refused request (the two 400s above) itself; nothing else may fail.
        assert [e for e in errors if "status of 400 (Bad Request)" not in e] == []
        assert len(errors) == 2, errors
    finally:
        await daemon.cleanup()
