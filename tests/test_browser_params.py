"""The trigger dialog's form for a job with typed parameters, in headless Chromium against a real
`jobd serve`: the form is made from the job's schema, a bad value comes back as an error next to
its field, and a good one starts a run with typed params (its secret hidden)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import wait_for
from process import DaemonProcess
from test_browser import WAIT_MS, browser  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser
SECRET = "hunter2-in-the-form"
ECHO = "import os; print('::result::' + os.environ['JOBD_PARAMS']); print('token', __import__('json').loads(os.environ['JOBD_PARAMS']).get('token'))"


@pytest.fixture
async def typed_jobd(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
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
[jobs.report]
description = "A report with typed parameters"
command = [{sys.executable!r}, "-c", {ECHO!r}]
[jobs.report.params.limit]
type = "integer"
min = 1
max = 100
default = 10
description = "rows at most"
[jobs.report.params.ratio]
type = "number"
[jobs.report.params.dry_run]
type = "boolean"
[jobs.report.params.mode]
type = "enum"
enum = ["fast", "full"]
default = "fast"
[jobs.report.params.region]
type = "string"
required = true
pattern = "^[a-z]{{2}}-[a-z]+$"
[jobs.report.params.tags]
type = "array"
[jobs.report.params.token]
type = "string"
secret = true
[jobs.plain]
shell = "echo plain"
""")
    process = DaemonProcess(path)
    await process.start()
    yield process
    await process.cleanup()


async def test_the_trigger_form_follows_the_schema(browser, typed_jobd):
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": 1280, "height": 1400})
    await page.goto(f"{typed_jobd.url}/#/jobs")
    card = page.locator('article[data-job="report"]')
    await card.locator("summary").click()
    form = card.locator("fieldset.param-form")
    await expect(form).to_be_visible(timeout=WAIT_MS)
    # Inputs by type, defaults prefilled, required marked, descriptions shown.
    limit = form.locator("#param-report-limit")
    assert await limit.get_attribute("type") == "number"
    await expect(limit).to_have_value("10")
    assert await form.locator("#param-report-dry_run").get_attribute("type") == "checkbox"
    assert await form.locator("#param-report-token").get_attribute("type") == "password"
    assert await form.locator("#param-report-mode").evaluate("e => e.tagName") == "SELECT"
    assert await form.locator("#param-report-tags").evaluate("e => e.tagName") == "TEXTAREA"
    region_label = form.locator('[data-param="region"] label')
    await expect(region_label.locator(".required")).to_have_attribute("title", "required")
    await expect(region_label).to_contain_text("region *")
    await expect(form.locator('[data-param="limit"]')).to_contain_text("rows at most")
    # A job without parameters keeps the JSON box.
    plain = page.locator('article[data-job="plain"]')
    await plain.locator("summary").click()
    await expect(plain.locator("textarea#params-plain")).to_be_visible()

    # A value the server refuses: its message next to its field, and no run.
    await limit.fill("0")
    await form.locator("#param-report-region").fill("eu-west")
    await card.get_by_role("button", name="Trigger").click()
    error = form.locator('[data-param="limit"] .field-error')
    await expect(error).to_have_text("must be an integer ≥ 1 and ≤ 100", timeout=WAIT_MS)
    await expect(limit).to_have_attribute("aria-invalid", "true")
    await form.locator("#param-report-region").fill("EU")
    await limit.fill("25")
    await expect(error).to_have_text("")
    await card.get_by_role("button", name="Trigger").click()
    await expect(form.locator('[data-param="region"] .field-error')).to_contain_text("must match the pattern")

    # Good values: a run with typed params.
    await form.locator("#param-report-region").fill("eu-west")
    await form.locator("#param-report-ratio").fill("0.5")
    await form.locator("#param-report-dry_run").check()
    await form.locator("#param-report-mode").select_option(label="full")
    await form.locator("#param-report-tags").fill('["a", "b"]')
    await form.locator("#param-report-token").fill(SECRET)
    await card.get_by_role("button", name="Trigger").click()
    notice = page.locator(".notice", has_text="Started run")
    await expect(notice).to_be_visible(timeout=WAIT_MS)
    run_id = int((await notice.locator("a").inner_text())[1:])
    await expect(form.locator("#param-report-token")).to_have_value("")
    async with aiohttp.ClientSession() as http:

        async def finished() -> dict | None:
            async with http.get(f"{typed_jobd.url}/api/v1/runs/{run_id}") as response:
                run = (await response.json())["run"]
            return run if run["status"] in ("COMPLETED", "FAILED") else None

        run = await wait_for(finished, timeout=20)
    typed = {"limit": 25, "ratio": 0.5, "dry_run": True, "mode": "full", "region": "eu-west", "tags": ["a", "b"]}
    assert run["status"] == "COMPLETED"
    assert run["params"] == {**typed, "token": "***"}
    assert run["result"] == {**typed, "token": "***"}  # what the command was given, its secret hidden on the way out
    assert "token ***" in run["log_tail"] and SECRET not in str(run)
    await page.goto(f"{typed_jobd.url}/#/runs/{run_id}")
    await expect(page.locator("main")).to_contain_text('"mode": "full"', timeout=WAIT_MS)
    assert SECRET not in await page.content()
    await page.close()
