"""One-off runs at a time: a trigger's `run_at` or `delay_s` keeps the run PENDING until then, on
both backends, through the API, the CLI and a restart of a real `jobd serve`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BACKENDS, TESTS, pg_url, wait_for
from openapi_check import schema_errors
from process import DaemonProcess
from test_browser import browser, start_jobd  # noqa: F401  (fixtures)

from jobd.models import RunStatus, iso_ms, now_ms, parse_iso_ms
from jobd.web.timing import MAX_DELAY_S

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

NOOP = {"handler": "sample_jobs:noop", "overlap": "allow", "max_concurrency": 10}
JOBS = {
    "noop": NOOP,
    "once": {"handler": "sample_jobs:noop", "overlap": "skip"},
    "buffered": {"handler": "sample_jobs:noop", "overlap": "buffer_one"},
    "latest": {"handler": "sample_jobs:noop", "overlap": "replace"},
}


def ms(text: str | None) -> int:
    assert text is not None
    return parse_iso_ms(text)


def utc_in(seconds: float) -> str:
    return iso_ms(now_ms() + round(seconds * 1000))


async def completed_after(h: Any, run: dict[str, Any]) -> Any:
    """The run ends COMPLETED, and it started no earlier than its run_after."""
    done = await h.finished(run["id"])
    assert done.status is RunStatus.COMPLETED, done
    assert done.started_at is not None and done.started_at >= ms(run["run_after"])
    return done


async def test_delay_s_and_run_at_hold_the_run_pending_until_then(start_daemon):
    h = await start_daemon(JOBS)
    before = now_ms()
    delayed = await h.trigger("noop", {"n": 1}, delay_s=1)
    after = now_ms()
    at = datetime.now(timezone(timedelta(hours=1))) + timedelta(seconds=1.5)  # an offset, not only Z
    timed = await h.trigger("noop", {"n": 2}, run_at=at.isoformat())
    assert delayed["status"] == timed["status"] == "PENDING"
    assert before + 1000 <= ms(delayed["run_after"]) <= after + 1000  # a second from the request's arrival
    assert ms(timed["run_after"]) == -(-int(at.timestamp() * 1_000_000) // 1000)
    # Not in the way of a run triggered now, and still PENDING (stored so) while before its time.
    quick = await h.trigger("noop")
    assert quick["run_after"] is None
    assert (await h.finished(quick["id"])).status is RunStatus.COMPLETED
    for run in (delayed, timed):
        seen = (await h.get_json(f"/api/v1/runs/{run['id']}"))["run"]
        if now_ms() < ms(run["run_after"]):
            assert seen["status"] == "PENDING" and seen["run_after"] == run["run_after"]
        assert seen["started_at"] is None or ms(seen["started_at"]) >= ms(run["run_after"])
    await completed_after(h, delayed)
    await completed_after(h, timed)


async def test_a_time_already_past_means_now_and_zero_delay_too(start_daemon):
    h = await start_daemon(JOBS)
    bodies = [{"run_at": "2020-01-01T00:00:00Z"}, {"run_at": "2020-01-01t01:00:00+01:00"}, {"delay_s": 0}]
    for body in [*bodies, {"run_at": None, "delay_s": None}]:
        run = await h.trigger("noop", **body)
        assert run["run_after"] is None, body
        assert (await h.finished(run["id"])).status is RunStatus.COMPLETED


async def test_a_scheduled_run_starts_soon_after_its_time(start_daemon, backend):
    """On a cluster node too: the node that created the run wakes the claimers at its time rather
    than leave it to the next poll (about a second)."""
    h = await start_daemon(JOBS)
    assert type(h.daemon.backend).__name__ == {"sqlite": "LocalBackend", "postgresql": "PostgresBackend"}[backend]
    run = await h.trigger("noop", delay_s=1)
    done = await completed_after(h, run)
    assert done.started_at - ms(run["run_after"]) < 750, done.started_at - ms(run["run_after"])


async def test_a_batch_takes_the_top_level_time_and_an_item_its_own(start_daemon):
    h = await start_daemon(JOBS)
    response = await h.client.post(
        "/api/v1/jobs/noop/trigger",
        json={"delay_s": 1, "runs": [{"params": {"i": 0}}, {"params": {"i": 1}, "delay_s": 0.5}, {"run_at": None}]},
    )
    body = await response.json()
    assert response.status == 202, body
    first, second, third = body["runs"]
    assert first["run_after"] == third["run_after"]  # one arrival time for the whole batch
    assert ms(first["run_after"]) - ms(second["run_after"]) == 500
    for run in body["runs"]:
        await completed_after(h, run)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"run_at": "2026-12-24T18:00:00"}, "run_at"),  # naive: no time zone
        ({"run_at": "2026-12-24"}, "run_at"),  # a date is naive too
        ({"run_at": "next tuesday"}, "run_at"),
        ({"run_at": 1767000000}, "run_at"),
        ({"delay_s": -1}, "delay_s"),
        ({"delay_s": MAX_DELAY_S + 1}, "delay_s"),
        ({"delay_s": "5"}, "delay_s"),
        ({"delay_s": True}, "delay_s"),
        ({"run_at": "2030-01-01T00:00:00Z", "delay_s": 5}, "run_at"),
        ({"runs": [{"params": {}}, {"run_at": "2026-12-24T18:00:00"}]}, "runs[1].run_at"),
        ({"runs": [{"delay_s": 1, "run_at": "2030-01-01T00:00:00Z"}]}, "runs[0].run_at"),
        ({"delay_s": 1, "runs": [{"delay_s": -2}]}, "runs[0].delay_s"),
    ],
)
async def test_bad_times_are_a_400_naming_the_field_and_create_nothing(start_daemon, body, field):
    h = await start_daemon(JOBS)
    response = await h.client.post("/api/v1/jobs/noop/trigger", json=body() if callable(body) else body)
    problem = await response.json()
    assert response.status == 400, problem
    assert response.content_type == "application/problem+json"
    assert problem["field"] == field and field in problem["detail"], problem
    queue = await h.get_json("/api/v1/queue")
    assert (queue["pending"], sum(queue["counts"].values())) == (0, 0)


async def test_a_scheduled_run_can_be_cancelled_and_never_starts(start_daemon):
    h = await start_daemon(JOBS)
    run = await h.trigger("noop", delay_s=1)
    response = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status == 200, await response.text()
    assert (await response.json())["run"]["status"] == "CANCELLED"
    # A run at the same time as the cancelled one: once it has run, the cancelled one is past its
    # time too, and it stayed CANCELLED without ever starting.
    witness = await h.trigger("noop", run_at=run["run_after"])
    await completed_after(h, witness)
    stored = await h.daemon.store.get_run(run["id"])
    assert stored is not None and stored.status is RunStatus.CANCELLED and stored.started_at is None
    again = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert again.status == 409


async def test_a_scheduled_run_is_an_active_pending_run_for_the_overlap_policies(start_daemon):
    h = await start_daemon(JOBS)
    # skip: a run waiting for its time holds the job, as any PENDING run does.
    waiting = await h.trigger("once", delay_s=60)
    refused = await h.trigger("once", expect=409)
    assert refused["active_run_ids"] == [waiting["id"]]
    # buffer_one: it is the one buffered run.
    buffered = await h.trigger("buffered", delay_s=60)
    refused = await h.trigger("buffered", expect=409)
    assert refused["active_run_ids"] == [buffered["id"]]
    # replace: a newer trigger replaces it; a scheduled replacing run replaces the active ones now.
    first = await h.trigger("latest", delay_s=60)
    second = await h.trigger("latest", delay_s=1)
    assert (await h.finished(first["id"])).status is RunStatus.CANCELLED
    await completed_after(h, second)
    for run in (waiting, buffered):
        await h.client.post(f"/api/v1/runs/{run['id']}/cancel")


async def test_the_cli_flags_against_a_live_daemon(start_daemon):
    h = await start_daemon(JOBS)
    url = str(h.client.make_url("")).rstrip("/")
    before = now_ms()
    code, out, err = await jobd_cli("trigger", "noop", "--url", url, "--json", "--delay", "1")
    assert code == 0, err
    delayed = json.loads(out)["run"]
    assert delayed["status"] == "PENDING" and before + 1000 <= ms(delayed["run_after"]) <= now_ms() + 1000
    at = utc_in(60)  # far enough ahead that a slow CLI start still sends a future time
    code, out, err = await jobd_cli("trigger", "noop", "--url", url, "--at", at)
    assert code == 0, err
    assert out.startswith("run ") and out.rstrip().endswith(f"PENDING until {at}")
    await completed_after(h, delayed)
    # Refused before anything is sent, with one line: the daemon never sees these.
    for flags, words in [
        (["--at", "2026-12-24T18:00:00"], "no time zone"),
        (["--at", "soon"], "not an ISO-8601 time"),
        (["--delay", "-1"], "not a number of seconds"),
        (["--delay", "nan"], "not a number of seconds"),
        (["--at", at, "--delay", "1"], "not both"),
    ]:
        code, out, err = await jobd_cli("trigger", "noop", "--url", url, *flags)
        assert (code, out) == (2, ""), (flags, err)
        assert err.count("\n") == 1 and words in err, (flags, err)
    # The server's own limit comes back as its problem, on one line too.
    code, out, err = await jobd_cli("trigger", "noop", "--url", url, "--delay", str(MAX_DELAY_S + 1))
    assert code == 1 and err.count("\n") == 1 and "delay_s" in err, err
    queue = await h.get_json("/api/v1/queue")
    assert sum(queue["counts"].values()) == 2


async def jobd_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobd", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- across a restart of a real `jobd serve` ---------------------------------------------------------


@pytest.fixture
async def daemons():
    started: list[DaemonProcess] = []
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    def make(path: Path) -> DaemonProcess:
        process = DaemonProcess(path, env=env)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.cleanup()


def serve_config(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Path:
    if backend == "postgresql":
        store = f'url = "{pg_url(request.getfixturevalue("pg_db"))}"'
    else:
        store = f'path = "{tmp_path / "state" / "jobd.db"}"'
    path = tmp_path / "jobd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[store]\n{store}\n'
        "[workers]\nconcurrency = 2\nshutdown_grace_s = 1\nkill_grace_s = 0.5\n"
        '[jobs.noop]\nhandler = "sample_jobs:noop"\noverlap = "allow"\n'
    )
    return path


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_run_at_survives_a_restart_and_runs_once_after_its_time(tmp_path, daemons, backend, request, how):
    config = serve_config(tmp_path, backend, request)
    first = daemons(config)
    url = await first.start()
    async with aiohttp.ClientSession() as http:
        run_at = utc_in(3)
        async with http.post(f"{url}/api/v1/jobs/noop/trigger", json={"run_at": run_at}) as response:
            assert response.status == 202, await response.text()
            run = (await response.json())["run"]
        assert run["status"] == "PENDING" and run["run_after"] == run_at
        if how == "SIGKILL":
            await first.kill()  # the 202 said it was committed: a crash loses nothing
        else:
            assert await first.stop() == 0
        assert now_ms() < ms(run_at), "the daemon took too long to stop: the test proves nothing"
        url = await daemons(config).start()

        async def finished() -> dict[str, Any] | None:
            async with http.get(f"{url}/api/v1/runs/{run['id']}") as response:
                seen: dict[str, Any] = (await response.json())["run"]
            assert seen["started_at"] is None or ms(seen["started_at"]) >= ms(run_at), seen
            return seen if seen["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

        done = await wait_for(finished, timeout=30, interval=0.05)
        assert done["status"] == "COMPLETED" and done["attempt"] == 1
        async with http.get(f"{url}/api/v1/runs", params={"job": "noop"}) as response:
            page = await response.json()
        assert [r["id"] for r in page["runs"]] == [run["id"]]  # once: no second run, no retry


def test_the_openapi_document_describes_the_times(backend):
    if backend != "sqlite":
        pytest.skip("the document is the same for both backends")
    valid = [
        {"run_at": "2026-12-24T18:00:00Z"},
        {"delay_s": 1.5, "params": {}},
        {"run_at": None, "delay_s": 3},
        {"delay_s": 1, "runs": [{"params": {}}, {"run_at": "2026-12-24T19:00:00+01:00"}]},
    ]
    invalid = [
        {"run_at": "2026-12-24T18:00:00Z", "delay_s": 1},
        {"delay_s": -1},
        {"delay_s": MAX_DELAY_S + 1},
        {"runs": [{"run_at": "2026-12-24T18:00:00Z", "delay_s": 0}]},
    ]
    for body in valid:
        assert schema_errors("components/schemas/TriggerRequest", body) == [], body
    for body in invalid:
        assert schema_errors("components/schemas/TriggerRequest", body), body


@pytest.mark.browser
async def test_the_dashboard_trigger_dialog_schedules_a_run(browser, start_jobd, backend):
    if backend != "sqlite":
        pytest.skip("the dialog is the same for both backends")
    from playwright.async_api import expect  # the browser fixture has checked that it is installed

    daemon = await start_jobd()
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{daemon.url}/#/jobs")
    card = page.locator('article[data-job="gated"]')
    await card.locator("summary").click()
    # An hour from now in the browser's own zone, as a datetime-local box takes it.
    local, wanted = await page.evaluate(
        """() => { const t = new Date(Date.now() + 3600e3); t.setMilliseconds(0);
                   const p = (n) => String(n).padStart(2, "0");
                   return [`${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())}T${p(t.getHours())}:`
                           + `${p(t.getMinutes())}:${p(t.getSeconds())}`, t.getTime()]; }"""
    )
    await card.get_by_label("Run at").fill(local)
    await card.get_by_role("button", name="Trigger").click()
    notice = page.locator(".notice", has_text="Scheduled run")
    await expect(notice).to_be_visible()
    run_id = int((await notice.locator("a").inner_text())[1:])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.url}/api/v1/runs/{run_id}") as response:
            run = (await response.json())["run"]
        assert run["status"] == "PENDING" and ms(run["run_after"]) == wanted
        await page.click('nav a[href="#/runs"]')
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        await expect(row.locator(".message")).to_contain_text("waiting until")
        await expect(row.locator(".message time")).to_have_attribute("datetime", run["run_after"])
        async with http.post(f"{daemon.url}/api/v1/runs/{run_id}/cancel") as response:
            assert response.status == 200
