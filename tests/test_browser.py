"""The dashboard in headless Chromium against a real `jobd serve` process.

Chromium comes from Debian's packages (`scripts/ensure-chromium`, run by `make test`); Playwright
only drives it. Screenshots of every page land in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import wait_for
from process import DaemonProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
READ_TOKEN = "read-token-for-the-browser"
ADMIN_TOKEN = "admin-token-for-the-browser"
WAIT_MS = 15000

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - reported by the fixture below
    async_playwright = None


def unavailable(reason: str) -> None:
    """In CI a missing browser is a failure (the suite must not pass without it); elsewhere a skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (scripts/ensure-chromium installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def jobs_config(tmp_path: Path, gate: Path, *, auth: bool = False) -> Path:
    tokens = (
        f'[auth]\ntokens = [{{ name = "viewer", token = "{READ_TOKEN}", scope = "read" }},\n'
        f'          {{ name = "ops", token = "{ADMIN_TOKEN}", scope = "admin" }}]\n'
        if auth else ""
    )
    # `gated` reports progress, then waits for the test to create the gate file: the test sees the
    # bar part-way for as long as it needs, with no timing involved.
    path = tmp_path / "jobd.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
[store]
path = "state/jobd.db"
[workers]
shutdown_grace_s = 2
kill_grace_s = 0.5
{tokens}
[jobs.gated]
description = "Reports progress, then waits for a gate file"
shell = '''echo "::progress::10 starting"; echo "working on it"; echo "::progress::40 halfway there"
while [ ! -e "{gate}" ]; do sleep 0.05; done
echo "past the gate"; echo "::progress::90 finishing"; echo '::result::{{"ok": true}}' '''
timeout_s = 50
[jobs.nightly]
description = "A scheduled job"
shell = "echo nightly"
schedule = "0 0 1 1 *"
timezone = "Europe/Skopje"
[jobs.flaky]
description = "Fails every time, retried once"
shell = "echo trying; echo 'it broke' >&2; exit 3"
schedule = "0 3 1 1 *"
retries = 1
retry_backoff_s = 0.1
alert_after_failures = 1
""")
    return path


@pytest.fixture
async def start_jobd(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[DaemonProcess] = []

    async def start(*, auth: bool = False) -> DaemonProcess:
        process = DaemonProcess(jobs_config(tmp_path, tmp_path / "gate", auth=auth))
        started.append(process)
        await process.start()
        return process

    yield start
    for process in started:
        await process.cleanup()


class Api:
    """The daemon's HTTP API from the test's side, to set the scene and to check what the page shows."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None = None) -> None:
        self.http = http
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, f"{self.url}/api/v1{path}", headers=self.headers, **kwargs) as response:
            assert response.status < 300, await response.text()
            return await response.json()

    async def finished_runs(self, job: str, count: int) -> list[dict[str, Any]]:
        async def done() -> list[dict[str, Any]] | None:
            runs = (await self.call("GET", "/runs", params={"job": job, "status": "COMPLETED,FAILED"}))["runs"]
            return runs if len(runs) >= count else None

        return await wait_for(done, timeout=WAIT_MS / 1000, interval=0.05)


def watch_console(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


async def test_every_page_loads_without_console_errors(browser: Browser, start_jobd: Callable[..., Any]) -> None:
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    async with aiohttp.ClientSession() as http:
        api = Api(http, daemon.url)
        await api.call("POST", "/jobs/flaky/trigger")
        first, retried = sorted(await api.finished_runs("flaky", 2), key=lambda r: r["id"])
        assert retried["retry_of"] == first["id"]

        await page.goto(f"{daemon.url}/")
        await expect(page.locator("#overview-title")).to_be_visible()
        await expect(page.locator(".chart")).to_have_attribute("aria-label", re.compile(r"0 completed, 2 failed"))
        await expect(page.locator('[data-count="FAILED"]')).to_have_text("2")
        await expect(page.locator(".rate")).to_contain_text("0.0% success rate")
        await shot(page, "overview")

        await page.click('nav a[href="#/jobs"]')
        await expect(page.locator("article.job")).to_have_count(3)
        flaky = page.locator('article[data-job="flaky"]')
        await expect(flaky).to_have_class(re.compile(r"\bfailing\b"))
        await expect(flaky.locator(".failures")).to_contain_text("2 in a row")
        nightly = page.locator('article[data-job="nightly"]')
        await expect(nightly).to_contain_text("0 0 1 1 *")
        await expect(nightly).to_contain_text("Europe/Skopje")
        await expect(nightly.locator("time").first).to_have_text(re.compile(r"^in "))
        await shot(page, "jobs")

        await page.click('nav a[href="#/runs"]')
        await expect(page.locator("tbody tr[data-run-id]")).to_have_count(2)
        await page.select_option("#filter-source", "retry")
        await expect(page.locator("tbody tr[data-run-id]")).to_have_count(1)
        assert "triggered_by=retry" in page.url
        await page.select_option("#filter-source", "")
        await expect(page.locator("tbody tr[data-run-id]")).to_have_count(2)
        await shot(page, "runs")

        await page.click(f'a[href="#/runs/{retried["id"]}"]')
        await expect(page.locator(".run-status [data-status]")).to_have_text("FAILED")
        await expect(page.locator(".error-box")).to_contain_text("exit code 3: it broke")
        await expect(page.locator(".chain li")).to_have_count(2)
        await expect(page.locator(".attempts")).to_contain_text("Attempt 2 of 2")
        await expect(page.locator("pre.log")).to_contain_text("trying")
        await shot(page, "run")

        await page.set_viewport_size({"width": 390, "height": 844})
        await page.click('nav a[href="#/runs"]')
        await expect(page.locator("tbody tr[data-run-id]")).to_have_count(2)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the runs page scrolls sideways at phone width"
        await shot(page, "runs-phone")
    assert errors == []


async def test_a_run_triggered_from_the_page_moves_to_completed_live(
        browser: Browser, start_jobd: Callable[..., Any], tmp_path: Path) -> None:
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    await page.goto(f"{daemon.url}/#/jobs")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    # Set on the window: if anything reloads the page, it is gone.
    await page.evaluate("window.notReloaded = true")

    card = page.locator('article[data-job="gated"]')
    await card.locator("summary").click()
    await card.locator("textarea").fill('{"who": "browser"}')
    await card.get_by_role("button", name="Trigger").click()
    link = page.locator(".notice a")
    await expect(link).to_have_text(re.compile(r"^#\d+$"))
    run_id = int((await link.inner_text())[1:])

    await page.click('nav a[href="#/runs"]')
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    await expect(row.locator("progress")).to_have_attribute("value", "40", timeout=WAIT_MS)
    await expect(row.locator(".message")).to_have_text("40% · halfway there")
    await expect(row.locator("[data-status]")).to_have_text("PROCESSING")
    await shot(page, "runs-progress")

    # The same run's own page in a second tab, following the log while the run waits.
    run_page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors += watch_console(run_page)
    await run_page.goto(f"{daemon.url}/#/runs/{run_id}")
    await expect(run_page.locator("pre.log")).to_contain_text("working on it")
    await expect(run_page.locator(".live-progress progress")).to_have_attribute("value", "40")
    await expect(run_page.get_by_role("button", name="Cancel")).to_be_visible()
    await expect(run_page.locator(".follow-note")).to_have_text("following live")
    await shot(run_page, "run-live")

    (tmp_path / "gate").touch()
    await expect(row.locator("[data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(row.locator("progress")).to_have_count(0)
    assert await page.evaluate("window.notReloaded === true")

    await expect(run_page.locator(".run-status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(run_page.locator("pre.log")).to_contain_text("past the gate")
    await expect(run_page.locator("pre.result")).to_contain_text('"ok": true')
    await expect(run_page.locator(".facts")).to_contain_text('{"who":"browser"}')
    await expect(run_page.get_by_role("button", name="Retry")).to_be_visible()
    assert errors == []


async def test_falls_back_to_polling_when_streams_are_blocked_and_shows_offline(
        browser: Browser, start_jobd: Callable[..., Any], tmp_path: Path) -> None:
    daemon = await start_jobd()
    page = await browser.new_page()
    await page.route("**/events**", lambda route: route.abort())
    await page.goto(f"{daemon.url}/#/runs")
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute("data-state", "polling")

    async with aiohttp.ClientSession() as http:
        api = Api(http, daemon.url)
        run = (await api.call("POST", "/jobs/gated/trigger"))["run"]
        row = page.locator(f'tr[data-run-id="{run["id"]}"]')
        await expect(row.locator("progress")).to_have_attribute("value", "40", timeout=WAIT_MS)
        (tmp_path / "gate").touch()
        await expect(row.locator("[data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
        await expect(indicator).to_have_attribute("data-state", "polling")

        # Unblocked, the page goes back to the stream by itself.
        await page.unroute("**/events**")
        await expect(indicator).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    await daemon.stop()
    await expect(indicator).to_have_attribute("data-state", "offline", timeout=WAIT_MS)


async def test_token_prompt_and_buttons_follow_the_scope(browser: Browser, start_jobd: Callable[..., Any]) -> None:
    daemon = await start_jobd(auth=True)
    page = await browser.new_page(viewport={"width": 1000, "height": 700})
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    await page.goto(f"{daemon.url}/#/jobs")

    token = page.get_by_label("API token")
    await expect(token).to_be_visible()
    await shot(page, "sign-in")
    await token.fill("not-a-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not accepted")

    await page.get_by_label("API token").fill(READ_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("article.job")).to_have_count(3)
    await expect(page.locator("#session [data-scope]")).to_have_text("read")
    await expect(page.get_by_role("button", name="Trigger")).to_have_count(0)
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    # A read token cannot open the firehose: the page polls, and says so.
    await expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    assert await page.evaluate("sessionStorage.getItem('jobd.token')") == READ_TOKEN
    assert await page.evaluate("localStorage.length") == 0

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("API token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#session [data-scope]")).to_have_text("admin")
    await expect(page.get_by_role("button", name="Trigger")).to_have_count(3)
    await expect(page.get_by_role("button", name="Pause")).to_have_count(2)

    # An admin token opens the firehose, with a ticket in the URL and never the token.
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.locator('article[data-job="nightly"]').get_by_role("button", name="Pause").click()
    await expect(page.locator('article[data-job="nightly"] .badge.paused')).to_be_visible()
    await shot(page, "jobs-admin")
    assert not [url for url in urls if READ_TOKEN in url or ADMIN_TOKEN in url]
    assert [url for url in urls if "/api/v1/events?ticket=" in url]
