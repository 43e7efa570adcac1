"""The dashboard in headless Chromium against a real `jobd serve` process.

Chromium comes from Debian's packages (`scripts/ensure-chromium`, run by `make test`); Playwright
only drives it. Screenshots of every page land in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import wait_for
from process import DaemonProcess, free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
READ_TOKEN = "read-token-for-the-browser"
TRIGGER_TOKEN = "trigger-token-for-the-browser"
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


def test_a_missing_browser_fails_under_ci_and_is_skipped_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="browser tests cannot run: no chromium"):
        unavailable("no chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        unavailable("no chromium")


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


def jobs_config(tmp_path: Path, gate: Path, *, auth: bool = False, port: int = 0) -> Path:
    tokens = (
        f'[auth]\ntokens = [{{ name = "viewer", token = "{READ_TOKEN}", scope = "read" }},\n'
        f'          {{ name = "ci", token = "{TRIGGER_TOKEN}", scope = "trigger" }},\n'
        f'          {{ name = "ops", token = "{ADMIN_TOKEN}", scope = "admin" }}]\n'
        if auth
        else ""
    )
    # `gated` reports progress, then waits for the test to create the gate file: the test sees the
    # bar part-way for as long as it needs, with no timing involved.
    path = tmp_path / "jobd.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
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
[jobs.long]
description = "Runs until cancelled"
command = ["sleep", "40"]
""")
    return path


@pytest.fixture
async def start_jobd(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[DaemonProcess] = []

    async def start(*, auth: bool = False, port: int = 0) -> DaemonProcess:
        process = DaemonProcess(jobs_config(tmp_path, tmp_path / "gate", auth=auth, port=port))
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


def watch_elsewhere(page: Page, url: str) -> list[str]:
    """Requests the page makes to anywhere but jobd (fonts, scripts, CDNs): there must be none."""
    elsewhere: list[str] = []
    page.on(
        "request", lambda request: None if request.url.startswith((url, "data:")) else elsewhere.append(request.url)
    )
    return elsewhere


def watch_console(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=full_page)


async def test_every_page_loads_without_console_errors(browser: Browser, start_jobd: Callable[..., Any]) -> None:
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    elsewhere = watch_elsewhere(page, daemon.url)
    async with aiohttp.ClientSession() as http:
        api = Api(http, daemon.url)
        await api.call("POST", "/jobs/flaky/trigger")
        first, retried = sorted(await api.finished_runs("flaky", 2), key=lambda r: r["id"])
        assert retried["retry_of"] == first["id"]
        # Enough runs for a second page of the runs table (25 a page).
        await api.call("POST", "/jobs/nightly/trigger", json={"runs": [{}] * 24, "overlap": "allow"})
        await api.finished_runs("nightly", 24)

        await page.goto(f"{daemon.url}/")
        await expect(page.locator("#overview-title")).to_be_visible()
        await expect(page.locator(".chart")).to_have_attribute("aria-label", re.compile(r"24 completed, 2 failed"))
        await expect(page.locator('[data-count="FAILED"]')).to_have_text("2")
        await expect(page.locator('[data-count="COMPLETED"]')).to_have_text("24")
        await expect(page.locator(".rate")).to_contain_text("92.3% success rate")
        for tile, text in (("pending", "0"), ("processing", "0"), ("workers", "0 / 4")):
            await expect(page.locator(f'[data-tile="{tile}"]')).to_have_text(text)
        await shot(page, "overview")

        await page.click('nav a[href="#/jobs"]')
        await expect(page.locator("article.job")).to_have_count(4)
        flaky = page.locator('article[data-job="flaky"]')
        await expect(flaky).to_have_class(re.compile(r"\bfailing\b"))
        await expect(flaky.locator(".failures")).to_contain_text("2 in a row")
        await expect(flaky).to_contain_text("Fails every time, retried once")
        await expect(flaky).to_contain_text(f"#{retried['id']}")
        await expect(flaky.locator("[data-status]")).to_have_text("FAILED")
        nightly = page.locator('article[data-job="nightly"]')
        await expect(nightly).not_to_have_class(re.compile(r"\bfailing\b"))
        await expect(nightly).to_contain_text("0 0 1 1 *")
        await expect(nightly).to_contain_text("Europe/Skopje")
        await expect(nightly).to_contain_text(re.compile(r"\d{4}-01-01 00:00:00 Europe/Skopje"))  # next run, absolute
        await expect(nightly.locator("time").first).to_have_text(re.compile(r"^in "))  # ... and relative
        await expect(nightly.locator(".muted", has_text=re.compile(r"\d+ ms"))).to_have_count(1)  # last run's duration
        await shot(page, "jobs")

        await page.click('nav a[href="#/runs"]')
        rows = page.locator("tbody tr[data-run-id]")
        await expect(rows).to_have_count(25)
        await expect(page.locator(".page-info")).to_have_text("1–25 of 26")
        await page.get_by_role("button", name="Older →").click()
        await expect(rows).to_have_count(1)
        await expect(page.locator(".page-info")).to_have_text("26–26 of 26")
        assert "offset=25" in page.url
        await page.get_by_role("button", name="← Newer").click()
        await expect(rows).to_have_count(25)
        await page.select_option("#filter-job", "flaky")
        await expect(rows).to_have_count(2)
        await page.select_option("#filter-source", "retry")
        await expect(rows).to_have_count(1)
        assert "triggered_by=retry" in page.url and "job=flaky" in page.url
        await page.select_option("#filter-source", "")
        await page.select_option("#filter-status", "COMPLETED")
        await expect(page.locator("tbody")).to_contain_text("No runs match.")
        await page.select_option("#filter-status", "FAILED")
        await expect(rows).to_have_count(2)
        await shot(page, "runs")

        await page.click(f'a[href="#/runs/{retried["id"]}"]')
        await expect(page.locator(".run-status [data-status]")).to_have_text("FAILED")
        await expect(page.locator(".error-box")).to_contain_text("exit code 3: it broke")
        await expect(page.locator(".chain li")).to_have_count(2)
        await expect(page.locator(".attempts")).to_contain_text("Attempt 2 of 2")
        await expect(page.locator("pre.log")).to_contain_text("trying")
        await shot(page, "run")

        await page.set_viewport_size({"width": 390, "height": 844})
        for name, route, ready, count in (
            ("overview", "#/overview", ".chart", 1),
            ("jobs", "#/jobs", "article.job", 4),
            ("runs", "#/runs", "tbody tr[data-run-id]", 25),
            ("run", f"#/runs/{retried['id']}", ".chain li", 2),
        ):
            await page.goto(f"{daemon.url}/{route}")
            await expect(page.locator(ready)).to_have_count(count)  # drawn, before the screenshot
            await expect(page.locator("main h1")).to_have_count(1)
            await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the {name} page scrolls sideways at phone width"
            await shot(page, f"{name}-phone")
    assert errors == [] and elsewhere == []


async def test_accessibility_basics_and_the_content_security_policy(
    browser: Browser, start_jobd: Callable[..., Any]
) -> None:
    """Headings, labels and the keyboard on every page; the policy enforced by the browser itself."""
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    await page.goto(f"{daemon.url}/#/jobs")
    await expect(page.locator("article.job")).to_have_count(4)
    # The first Tab reaches the skip link; following it puts the focus on the page's content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "skip"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    # The navigation works from the keyboard.
    await page.locator('nav a[href="#/runs"]').focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("main h1")).to_have_text("Runs")
    assert await page.evaluate("document.querySelector('nav a[aria-current=page]').textContent") == "Runs"
    unlabelled = """() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.getAttribute('aria-labelledby') && !el.textContent.trim())
        .map((el) => el.outerHTML.slice(0, 80))"""
    for route in ("#/overview", "#/jobs", "#/runs"):
        await page.goto(f"{daemon.url}/{route}")
        await expect(page.locator("main h1")).to_have_count(1)
        await expect(page.locator("main h2, main table, main .empty").first).to_be_attached()
        assert await page.evaluate(unlabelled) == [], route
    assert await page.evaluate("document.documentElement.lang") == "en"
    assert errors == []

    # Only the page's own files run: an inline script is refused by the Content-Security-Policy.
    with contextlib.suppress(Exception):
        await page.add_script_tag(content="window.inlineScriptRan = true")
    assert await page.evaluate("window.inlineScriptRan === undefined")
    assert any("Content Security Policy" in error for error in errors), errors


async def test_the_api_reference_page(browser: Browser, start_jobd: Callable[..., Any]) -> None:
    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_console(page)
    elsewhere = watch_elsewhere(page, daemon.url)
    await page.goto(f"{daemon.url}/api/docs")
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.url}/api/v1/openapi.json") as response:
        document = await response.json()
    operations = [
        op
        for item in document["paths"].values()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]
    await expect(page.locator("section[id^='op-']")).to_have_count(len(operations))
    await expect(page.locator("#op-stats")).to_contain_text("/api/v1/stats")
    await expect(page.locator("#op-runEvents")).to_contain_text("text/event-stream")
    await shot(page, "api-reference", full_page=False)  # the whole page is very long
    assert errors == [] and elsewhere == []


async def test_a_run_triggered_from_the_page_moves_to_completed_live(
    browser: Browser, start_jobd: Callable[..., Any], tmp_path: Path
) -> None:
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
    # A run started elsewhere shows up on the open page by itself.
    async with aiohttp.ClientSession() as http:
        other = (await Api(http, daemon.url).call("POST", "/jobs/nightly/trigger"))["run"]
    await expect(page.locator(f'tr[data-run-id="{other["id"]}"] [data-status]')).to_have_text(
        "COMPLETED", timeout=WAIT_MS
    )
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert await page.evaluate("window.notReloaded === true")

    await expect(run_page.locator(".run-status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
    await expect(run_page.locator("pre.log")).to_contain_text("past the gate")
    await expect(run_page.locator("pre.result")).to_contain_text('"ok": true')
    await expect(run_page.locator(".facts")).to_contain_text('{"who":"browser"}')
    await expect(run_page.get_by_role("button", name="Retry")).to_be_visible()
    assert errors == []


async def test_falls_back_to_polling_when_streams_are_blocked_and_shows_offline(
    browser: Browser, start_jobd: Callable[..., Any], tmp_path: Path
) -> None:
    port = free_port()
    daemon = await start_jobd(port=port)
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
        # The run's own page follows it by polling while streams are blocked, and live once they are not.
        run_page = await browser.new_page()
        await run_page.route("**/events**", lambda route: route.abort())
        await run_page.goto(f"{daemon.url}/#/runs/{run['id']}")
        note = run_page.locator(".follow-note")
        await expect(note).to_have_text("following (polling)")
        await expect(run_page.locator("pre.log")).to_contain_text("working on it")
        await run_page.unroute("**/events**")
        await expect(note).to_have_text("following live", timeout=WAIT_MS)
        (tmp_path / "gate").touch()
        await expect(row.locator("[data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
        await expect(indicator).to_have_attribute("data-state", "polling")
        await expect(run_page.locator(".run-status [data-status]")).to_have_text("COMPLETED", timeout=WAIT_MS)
        await expect(run_page.locator("pre.log")).to_contain_text("past the gate")
        await run_page.close()

        # Unblocked, the page goes back to the stream by itself.
        await page.unroute("**/events**")
        await expect(indicator).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    await daemon.stop()
    await expect(indicator).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    # jobd comes back (on the same address): the page finds it and goes live again, with no reload.
    await start_jobd(port=port)
    await expect(indicator).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(row.locator("[data-status]")).to_have_text("COMPLETED")


async def sign_in_again(page: Page, token: str, scope: str) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#session [data-scope]")).to_have_text(scope)


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
    await expect(page.locator("article.job")).to_have_count(4)
    await expect(page.locator("#session [data-scope]")).to_have_text("read")
    await expect(page.get_by_role("button", name="Trigger")).to_have_count(0)
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    # A read token cannot open the firehose: the page polls, and says so.
    await expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    assert await page.evaluate("sessionStorage.getItem('jobd.token')") == READ_TOKEN
    assert await page.evaluate("localStorage.length") == 0

    # A trigger token: Trigger, but no Pause; on a run's page Cancel, then Retry once it has ended.
    await sign_in_again(page, TRIGGER_TOKEN, "trigger")
    await expect(page.get_by_role("button", name="Trigger")).to_have_count(4)
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    long = page.locator('article[data-job="long"]')
    await long.get_by_role("button", name="Trigger").click()
    link = page.locator(".notice a")
    await expect(link).to_have_text(re.compile(r"^#\d+$"))
    run_id = int((await link.inner_text())[1:])
    await link.click()
    status = page.locator(".run-status [data-status]")
    await expect(status).to_have_text("PROCESSING", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    await page.get_by_role("button", name="Cancel").click()
    await expect(status).to_have_text("CANCELLED", timeout=WAIT_MS)
    await page.get_by_role("button", name="Retry").click()
    await expect(page).to_have_url(re.compile(rf"#/runs/{run_id + 1}$"))
    await expect(page.locator(".facts")).to_contain_text("retry")
    await expect(page.get_by_role("button", name="Cancel")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("button", name="Cancel").click()
    await expect(status).to_have_text("CANCELLED", timeout=WAIT_MS)

    await page.click('nav a[href="#/jobs"]')
    await sign_in_again(page, ADMIN_TOKEN, "admin")
    await expect(page.get_by_role("button", name="Trigger")).to_have_count(4)
    await expect(page.get_by_role("button", name="Pause")).to_have_count(2)

    # An admin token opens the firehose, with a ticket in the URL and never the token.
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.locator('article[data-job="nightly"]').get_by_role("button", name="Pause").click()
    await expect(page.locator('article[data-job="nightly"] .badge.paused')).to_be_visible()
    await shot(page, "jobs-admin")
    assert not [url for url in urls if READ_TOKEN in url or TRIGGER_TOKEN in url or ADMIN_TOKEN in url]
    assert [url for url in urls if "/api/v1/events?ticket=" in url]


async def test_the_jobs_page_counts_skipped_fires_live(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "skips.toml"
    path.write_text("""
[server]
host = "127.0.0.1"
port = 0
[store]
path = "state/jobd.db"
[workers]
shutdown_grace_s = 0.5
kill_grace_s = 0.5
[jobs.busy]
description = "Fires every second; its one run lasts 40 s, so the fires after the first are skipped"
command = ["sleep", "40"]
schedule = "* * * * * *"
""")
    daemon = DaemonProcess(path)
    try:
        await daemon.start()
        page = await browser.new_page()
        await page.goto(f"{daemon.url}/#/jobs")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        skipped = page.locator('article[data-job="busy"] .skipped')
        await expect(skipped).to_contain_text("(overlap skip), last", timeout=WAIT_MS)
        shown = int(await skipped.get_attribute("data-count") or "0")
        # Live, the page reloads a job only on an event: the next skips come as fire_skipped messages.
        await page.wait_for_function(
            "n => Number(document.querySelector('article[data-job=\"busy\"] .skipped').dataset.count) > n",
            arg=shown,
            timeout=WAIT_MS,
        )
        await shot(page, "jobs-skipped")
    finally:
        await daemon.cleanup()


async def test_jobd_js_follows_a_run_in_chromium_across_a_restart(
    browser: Browser, start_jobd: Callable[..., Any]
) -> None:
    """/static/jobd.js with a browser's own EventSource: a token (tickets), `shutdown`, a new daemon."""
    port = free_port()
    first = await start_jobd(auth=True, port=port)
    page = await browser.new_page()
    async with aiohttp.ClientSession() as http:
        api = Api(http, first.url, ADMIN_TOKEN)

        async def streams_open() -> bool:
            async with http.get(f"{first.url}/metrics", headers=api.headers) as response:
                return "jobd_sse_streams_open 1.0" in await response.text()

        await api.call("POST", "/jobs/long/trigger")
        run = (await api.call("POST", "/jobs/long/trigger", json={"overlap": "queue"}))["run"]  # waits: PENDING
        await page.goto(f"{first.url}/")
        await page.evaluate(
            """([runId, token]) => import("/static/jobd.js").then(({ watchRun }) => {
            window.seen = [];
            watchRun(runId, {
              token,
              onStatusChange: (update) => window.seen.push(update.status),
              onComplete: (update) => window.seen.push(`done ${update.status}`),
              onError: (error) => { if (error.fatal) window.seen.push(`fatal ${error.message}`); },
            });
          })""",
            [run["id"], READ_TOKEN],
        )
        await wait_for(streams_open)
        await first.stop()
        second = await start_jobd(auth=True, port=port)
        await wait_for(streams_open, timeout=WAIT_MS / 1000)
        await api.call("POST", f"/runs/{run['id']}/cancel")
        await page.wait_for_function("window.seen.includes('done CANCELLED')", timeout=WAIT_MS)
    seen = await page.evaluate("window.seen")
    # After the restart the run may have started before it was cancelled.
    assert seen[0] == "PENDING" and seen[-2:] == ["CANCELLED", "done CANCELLED"], seen
    assert not [entry for entry in seen if entry.startswith("fatal")], seen
    streams = [
        line for line in second.events("request") if line["path"].startswith(f"/api/v1/runs/{run['id']}/events?")
    ]
    assert [line["status"] for line in streams] == [200], streams
    assert "ticket=[redacted]" in streams[0]["path"]
