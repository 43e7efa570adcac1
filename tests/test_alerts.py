"""`[alerts]` as a notifier with a threshold, against a real daemon on SQLite and on PostgreSQL:
the payload receivers have always had, once per failure streak at each job's threshold, the
recovery after it, retries, the record, a restart, the metrics and the config's rules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from conftest import BACKENDS, Harness, wait_for
from notifyhelp import Hook, hook  # noqa: F401 (the fixture)
from structlog.testing import LogCapture

from jobd.app import Daemon
from jobd.config import ConfigError, parse_config
from jobd.models import Run, RunStatus, TriggerSource, iso_ms, now_ms
from jobd.notify.alerts import describe_failure
from jobd.web import create_app


class Receiver:
    """A webhook endpoint for other tests' daemons: records every JSON body; answers with queued
    statuses, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.arrivals.put_nowait(body)
        return web.json_response({"ok": True}, status=self.statuses.pop(0) if self.statuses else 200)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.arrivals.get(), 10.0)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hook"))
    return r


def flaky(flag: Path, **more: Any) -> dict[str, Any]:
    """A job that fails with "disk full" until `flag` exists."""
    return {"shell": f"test -e {flag} || {{ echo 'disk full' >&2; exit 1; }}", **more}


async def records(h: Any, query: str) -> list[dict[str, Any]]:
    return list((await h.get_json(f"/api/v1/notifications{query}"))["notifications"])


async def settled(h: Any, query: str, count: int, status: str = "delivered") -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        found = await records(h, query)
        return found if len(found) == count and all(n["status"] == status for n in found) else None

    result: list[dict[str, Any]] = await wait_for(done, timeout=20)
    return result


async def run(h: Any, job: str) -> int:
    created = await h.trigger(job)
    await h.finished(created["id"])
    return int(created["id"])


async def metric(h: Any, name: str) -> float:
    text = await (await h.client.get("/metrics")).text()
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_streak_alerts_once_at_its_threshold_and_its_end_recovers(
    start_daemon: Any, hook: Hook, tmp_path: Path
) -> None:
    flag = tmp_path / "healthy"
    h = await start_daemon(
        {"flaky": flaky(flag, alert_after_failures=2), "steady": flaky(flag)},
        alerts={"webhook_url": hook.url, "alert_after_failures": 3},
    )
    assert h.daemon.config.jobs["steady"].alert_after_failures == 3
    ids = [await run(h, "flaky") for _ in range(3)]  # the second reaches 2; the third alerts no more
    for _ in range(2):
        await run(h, "steady")  # below its threshold of 3
    [failure] = await settled(h, "?job=flaky", 1)
    assert json.loads(hook.delivered[0]) == {
        "kind": "failure",
        "job": "flaky",
        "run_id": ids[1],
        "error": "exit code 1: disk full",
        "consecutive_failures": 2,
        "text": f"jobd: job 'flaky' failed 2 times in a row (last: run {ids[1]}: exit code 1: disk full)",
    }
    assert (failure["job"], failure["event"], failure["run_id"]) == ("flaky", "failure", ids[1])
    assert failure["payload"] == json.loads(hook.delivered[0])

    flag.touch()
    healed = await run(h, "flaky")
    await run(h, "steady")  # its streak of 2 never alerted: no recovery
    await run(h, "flaky")  # a second success: nothing
    await settled(h, "?job=flaky", 2)
    assert len(hook.delivered) == 2
    assert json.loads(hook.delivered[1]) == {
        "kind": "recovery",
        "job": "flaky",
        "run_id": healed,
        "status": "completed",
        "previous_failures": 3,
        "text": f"jobd: job 'flaky' recovered (run {healed} completed)",
    }
    assert await metric(h, "jobd_alert_webhooks_sent_total") == 2
    assert await metric(h, "jobd_alert_webhooks_failed_total") == 0


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_threshold_of_one_and_a_retried_attempt_counts(start_daemon: Any, hook: Hook, tmp_path: Path) -> None:
    h = await start_daemon(
        {
            "touchy": flaky(tmp_path / "never", alert_after_failures=1),
            "retried": flaky(tmp_path / "never", retries=2, retry_backoff_s=0.01),
        },
        alerts={"webhook_url": hook.url},
    )
    touchy = await run(h, "touchy")
    await run(h, "retried")  # three attempts, three failures: the third reaches the default of 3
    [first, second] = sorted(
        (json.loads(body) for body in (await _delivered(h, hook, 2))), key=lambda body: body["job"]
    )
    assert first["job"] == "retried" and first["consecutive_failures"] == 3
    assert second["text"] == f"jobd: job 'touchy' failed (run {touchy}: exit code 1: disk full)"


async def _delivered(h: Any, hook: Hook, count: int) -> list[bytes]:
    await settled(h, "", count)
    return hook.delivered


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_server_error_is_retried_then_delivered_and_a_4xx_is_not(
    start_daemon: Any, hook: Hook, tmp_path: Path
) -> None:
    hook.statuses = [500, 503]
    h = await start_daemon(
        {
            "a": flaky(tmp_path / "never", alert_after_failures=1),
            "b": flaky(tmp_path / "never", alert_after_failures=1),
        },
        alerts={"webhook_url": hook.url, "webhook_retries": 3},
    )
    first = await run(h, "a")
    [record] = await settled(h, "?job=a", 1)
    assert (record["notifier"], record["attempts"], record["run_id"]) == ("alerts", 3, first)
    assert record["last_error"].startswith("HTTP 503")
    assert [status for _, _, status in hook.requests] == [500, 503, 200]
    headers, _, _ = hook.requests[-1]
    assert headers["Content-Type"] == "application/json"

    hook.statuses = [400]
    await run(h, "b")
    [refused] = await settled(h, "?job=b", 1, status="failed")
    assert (refused["attempts"], refused["last_error"]) == (1, "HTTP 400: ok")
    assert await metric(h, "jobd_alert_webhooks_sent_total") == 1
    assert await metric(h, "jobd_alert_webhooks_failed_total") == 1


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_an_alert_pending_at_a_stop_is_delivered_by_the_next_start(
    start_daemon: Any, make_config: Any, hook: Hook, tmp_path: Path
) -> None:
    hook.failing = 503
    config = make_config(
        {"fail": flaky(tmp_path / "never", alert_after_failures=1)},
        alerts={"webhook_url": hook.url, "webhook_retries": 20},
    )
    first = await start_daemon(config=config)
    failed = await run(first, "fail")
    await wait_for(lambda: len(hook.requests) >= 1, timeout=20)
    await first.client.close()  # stops that daemon: the store is free for the next one
    hook.failing = 0
    second = await start_daemon(config=config)
    [record] = await settled(second, "?job=fail", 1)
    assert record["run_id"] == failed and record["attempts"] >= 2
    assert [json.loads(body)["run_id"] for body in hook.delivered] == [failed]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_snoozing_a_job_silences_its_alerts_too(start_daemon: Any, hook: Hook, tmp_path: Path) -> None:
    h = await start_daemon(
        {"fail": flaky(tmp_path / "never", alert_after_failures=1)}, alerts={"webhook_url": hook.url}
    )
    response = await h.client.post("/api/v1/jobs/fail/snooze", json={"until": iso_ms(now_ms() + 3_600_000)})
    assert response.status < 300
    await run(h, "fail")
    [record] = await settled(h, "?job=fail", 1, status="snoozed")
    assert record["notifier"] == "alerts" and hook.requests == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_without_a_webhook_alerts_are_log_lines_only(
    aiohttp_client: Any, make_config: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "healthy"
    capture = LogCapture()
    log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[capture])
    daemon = Daemon(
        make_config({"flaky": flaky(flag, alert_after_failures=2)}), environ={"PATH": "/usr/bin:/bin"}, log=log
    )
    h = Harness(await aiohttp_client(create_app(daemon)), daemon)
    ids = [await run(h, "flaky") for _ in range(3)]
    flag.touch()
    healed = await run(h, "flaky")

    def logged() -> list[dict[str, Any]] | None:
        found = [e for e in capture.entries if e["event"] in ("job_alert", "job_recovered")]
        return found if len(found) == 2 else None

    alerts = await wait_for(logged, timeout=10)
    assert [(e["event"], e["log_level"], e["run_id"]) for e in alerts] == [
        ("job_alert", "error", ids[1]),
        ("job_recovered", "warning", healed),
    ]
    assert (alerts[0]["consecutive_failures"], alerts[0]["exit_code"]) == (2, 1)
    assert (alerts[1]["status"], alerts[1]["previous_failures"]) == ("completed", 3)
    assert await records(h, "") == [] and "alerts" not in daemon.config.notifiers


def test_the_alerts_name_is_reserved_only_with_a_webhook() -> None:
    mine = {"notifiers": {"alerts": {"kind": "command", "argv": ["true"]}}}
    assert parse_config(mine, environ={}).notifiers["alerts"].kind == "command"
    with pytest.raises(ConfigError) as caught:
        parse_config({**mine, "alerts": {"webhook_url": "http://127.0.0.1:9/"}}, environ={})
    assert str(caught.value).startswith("notifiers.alerts: the name is the [alerts] webhook's")
    config = parse_config(
        {"alerts": {"webhook_url": "http://127.0.0.1:9/", "webhook_retries": 5, "webhook_timeout_s": 2}},
        environ={},
    )
    alerts = config.notifiers["alerts"]
    assert (alerts.kind, alerts.url, alerts.max_attempts, alerts.timeout_s) == ("webhook", "http://127.0.0.1:9/", 6, 2)
    assert alerts.body is None and config.warnings == ()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"exit_code": 2, "error": "boom"}, "run 9: exit code 2: boom"),
        ({"exit_code": 2, "error": "exit code 2"}, "run 9: exit code 2"),
        ({"exit_code": None, "error": "line one\nline two"}, "run 9: line one"),
        ({"exit_code": 137, "error": None}, "run 9: exit code 137"),
        ({"exit_code": None, "error": None}, "run 9: failed"),
        ({"exit_code": None, "error": "x" * 1000}, "run 9: " + "x" * 299 + "…"),
    ],
)
def test_describe_failure(fields: dict[str, Any], expected: str) -> None:
    run = Run(id=9, job="backup", status=RunStatus.FAILED, triggered_by=TriggerSource.CRON, created_at=0, **fields)
    assert describe_failure(run) == expected
