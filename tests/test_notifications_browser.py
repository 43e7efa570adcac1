"""The dashboard's snooze button, in headless Chromium against a real `jobd serve` process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from test_browser import WAIT_MS, Api, browser, start_jobd, watch_console  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

try:
    from playwright.async_api import Browser, expect
except ImportError:  # pragma: no cover - the browser fixture skips
    pass


async def test_a_job_is_snoozed_and_unsnoozed_from_its_card(browser: Browser, start_jobd: Callable[..., Any]) -> None:
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    await page.goto(f"{daemon.url}/#/jobs")
    card = page.locator('article[data-job="nightly"]')
    await card.get_by_role("button", name="Snooze 1 h").click()
    await expect(card.locator(".badge.snoozed")).to_be_visible(timeout=WAIT_MS)
    async with aiohttp.ClientSession() as http:
        job = (await Api(http, daemon.url).call("GET", "/jobs/nightly"))["job"]
        assert job["snoozed_until"] is not None
        await card.get_by_role("button", name="Unsnooze").click()
        await expect(card.locator(".badge.snoozed")).to_have_count(0, timeout=WAIT_MS)
        await expect(card.get_by_role("button", name="Snooze 1 h")).to_be_visible()
        assert (await Api(http, daemon.url).call("GET", "/jobs/nightly"))["job"]["snoozed_until"] is None
    assert errors == []
