"""Notifications against a real daemon, on SQLite and on PostgreSQL: webhooks with a failing
phase, mail to a local SMTP server, a command reading the event on stdin, snoozing, the record
and its API, and the config's refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, wait_for
from notifyhelp import Hook, Mailbox, hook, smtp  # noqa: F401 (fixtures)

from jobd.config import Config, ConfigError, parse_config
from jobd.models import RunStatus, iso_ms, now_ms

FAILS = {"handler": "sample_jobs:fails"}
NOOP = {"handler": "sample_jobs:noop"}


def parse(raw: dict[str, Any]) -> Config:
    return parse_config(raw, environ={})


def webhook(url: str, **more: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, "retry_backoff_s": 0.05, "timeout_s": 5.0, **more}


async def notifications(h: Any, query: str = "") -> list[dict[str, Any]]:
    return list((await h.get_json(f"/api/v1/notifications{query}"))["notifications"])


async def settled(h: Any, query: str, count: int = 1, status: str = "delivered") -> list[dict[str, Any]]:
    """Wait until `count` notifications match and all have `status`."""

    async def done() -> list[dict[str, Any]] | None:
        found = await notifications(h, query)
        return found if len(found) >= count and all(n["status"] == status for n in found) else None

    result: list[dict[str, Any]] = await wait_for(done, timeout=20)
    return result


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_webhook_failing_at_first_is_retried_then_delivered(start_daemon: Any, hook: Hook) -> None:
    hook.statuses = [500, 503]
    body = {"text": "$text", "job": "$job", "status": "${status}", "exit": "$exit_code"}
    h = await start_daemon(
        {"fail": {**FAILS, "notify": {"on_failure": ["chat"]}}},
        notifiers={"chat": webhook(hook.url, body=body, headers={"X-Token": "abc"})},
    )
    run = await h.trigger("fail", {"message": 'a "quoted"\nerror'})
    assert (await h.finished(run["id"])).status is RunStatus.FAILED
    [record] = await settled(h, "?job=fail")
    assert (record["event"], record["notifier"], record["run_id"]) == ("failure", "chat", run["id"])
    assert record["attempts"] == 3 and record["last_error"].startswith("HTTP 503")
    assert record["delivered_at"] is not None and record["next_attempt_at"] is None
    assert [status for _, _, status in hook.requests] == [500, 503, 200]
    headers, sent, _ = hook.requests[-1]
    assert headers["X-Token"] == "abc" and headers["Content-Type"] == "application/json"
    message = json.loads(sent)
    assert message["job"] == "fail" and message["status"] == "FAILED" and message["exit"] == ""
    assert message["text"].startswith(f"jobd: job 'fail' failed (run {run['id']}: ValueError")
    assert record["payload"]["run"]["id"] == run["id"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_mail_reaches_the_smtp_server(start_daemon: Any, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    mail = {
        "kind": "email",
        "host": "127.0.0.1",
        "port": port,
        "from": "jobd@example.com",
        "to": ["ops@example.com", "dev@example.com"],
        "subject": "[$event] $job",
        "retry_backoff_s": 0.05,
    }
    h = await start_daemon({"noop": {**NOOP, "notify": {"on_success": ["mail"]}}}, notifiers={"mail": mail})
    run = await h.trigger("noop")
    await h.finished(run["id"])
    await settled(h, "?job=noop")
    [(envelope, message)] = box.messages
    assert envelope.mail_from == "jobd@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert message["Subject"] == "[success] noop"
    text = message.get_content().replace("\r\n", "\n")
    assert text.startswith(f"jobd: job 'noop' succeeded (run {run['id']} completed)")
    assert json.loads(text.split("\n\n", 1)[1])["run"]["status"] == "COMPLETED"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_command_gets_the_event_as_json_on_stdin(start_daemon: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read())"
    command = {"kind": "command", "argv": [sys.executable, "-c", script, str(out)], "retry_backoff_s": 0.05}
    h = await start_daemon(
        {"noop": {**NOOP, "notify": {"on_start": ["cmd"], "on_success": ["cmd"]}}}, notifiers={"cmd": command}
    )
    run = await h.trigger("noop", {"x": 1})
    await h.finished(run["id"])
    await settled(h, "?job=noop", count=2)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["event"] for e in events) == ["start", "success"]
    assert all(e["job"] == "noop" and e["run"]["id"] == run["id"] for e in events)
    assert {e["event"]: e["run"]["status"] for e in events} == {"start": "PROCESSING", "success": "COMPLETED"}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_defaults_recovery_and_a_failed_command(start_daemon: Any, hook: Hook, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    h = await start_daemon(
        {
            "flaky": {"handler": "notify_jobs:flag", "notify": {"on_recovery": ["chat"]}},
            "noop": NOOP,
        },
        notifiers={
            "chat": webhook(hook.url),
            "broken": {"kind": "command", "argv": ["/bin/sh", "-c", "echo nope >&2; exit 3"], "max_attempts": 2},
        },
        defaults={"notify": {"on_failure": ["chat", "broken"]}},
    )
    assert h.daemon.config.jobs["noop"].notify.on_failure == ("chat", "broken")
    params = {"path": str(flag)}
    await h.finished((await h.trigger("flaky", params))["id"])
    flag.touch()
    await h.finished((await h.trigger("flaky", params))["id"])
    await settled(h, "?job=flaky&status=delivered", count=2)
    events = [json.loads(body)["event"] for body in hook.delivered]
    assert sorted(events) == ["failure", "recovery"]
    [broken] = await settled(h, "?job=flaky&status=failed", status="failed")
    assert broken["notifier"] == "broken" and broken["attempts"] == 2
    assert broken["last_error"] == "exit code 3: nope"
    metrics = await (await h.client.get("/metrics")).text()
    assert "jobd_notifications_delivered_total 2.0" in metrics and "jobd_notifications_failed_total 1.0" in metrics
    assert [n["status"] for n in await notifications(h, "?status=pending")] == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_snooze_silences_a_job_until_unsnoozed(start_daemon: Any, hook: Hook) -> None:
    h = await start_daemon(
        {"fail": {**FAILS, "notify": {"on_failure": ["chat"]}}}, notifiers={"chat": webhook(hook.url)}
    )
    until = iso_ms(now_ms() + 3_600_000)
    response = await h.client.post("/api/v1/jobs/fail/snooze", json={"until": until})
    assert response.status == 200 and (await response.json())["snoozed_until"] == until
    assert (await h.get_json("/api/v1/jobs/fail"))["job"]["snoozed_until"] == until
    await h.finished((await h.trigger("fail"))["id"])
    [snoozed] = await settled(h, "?job=fail", status="snoozed")
    assert snoozed["attempts"] == 0
    response = await h.client.delete("/api/v1/jobs/fail/snooze")
    assert (await response.json())["snoozed_until"] is None
    assert (await h.get_json("/api/v1/jobs/fail"))["job"]["snoozed_until"] is None
    second = await h.trigger("fail")
    await h.finished(second["id"])
    await settled(h, "?job=fail&status=delivered")
    assert [json.loads(body)["run"]["id"] for body in hook.delivered] == [second["id"]]
    # `until: null` unsnoozes too; a time that is not ISO-8601 is refused
    assert (await h.client.post("/api/v1/jobs/fail/snooze", json={"until": None})).status == 200
    assert (await h.client.post("/api/v1/jobs/fail/snooze", json={"until": "tomorrow"})).status == 400
    assert (await h.client.post("/api/v1/jobs/nope/snooze", json={"until": until})).status == 404


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_the_record_pages_filters_and_fails_at_once_on_a_4xx(start_daemon: Any, hook: Hook) -> None:
    hook.statuses = [404]
    h = await start_daemon(
        {"noop": {**NOOP, "notify": {"on_success": ["chat"]}}}, notifiers={"chat": webhook(hook.url)}
    )
    for _ in range(3):
        await h.finished((await h.trigger("noop"))["id"])
    await wait_for(lambda: len(hook.requests) == 3, timeout=20)
    [refused] = await settled(h, "?status=failed", status="failed")
    assert refused["attempts"] == 1 and refused["last_error"].startswith("HTTP 404")
    page = await h.get_json("/api/v1/notifications?limit=2")
    assert len(page["notifications"]) == 2 and page["pagination"]["has_more"]
    rest = await h.get_json(f"/api/v1/notifications?limit=2&cursor={page['pagination']['next_cursor']}")
    ids = [n["id"] for n in page["notifications"] + rest["notifications"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3 and not rest["pagination"]["has_more"]
    assert (await h.client.get("/api/v1/notifications?status=lost")).status == 400


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_late_and_long_go_through_notify_and_a_test_through_the_api(start_daemon: Any, hook: Hook) -> None:
    h = await start_daemon(
        {"noop": {**NOOP, "notify": {"on_late": ["chat"], "on_long": ["chat"]}}},
        notifiers={"chat": webhook(hook.url), "down": webhook("http://127.0.0.1:9/hook", max_attempts=1)},
    )
    job = h.daemon.config.jobs["noop"]
    assert await h.daemon.notifications.notify(job, "late", reason="not started 60 s after 10:00") == 1
    await settled(h, "?job=noop")
    assert json.loads(hook.delivered[0])["text"] == "jobd: job 'noop' is late (not started 60 s after 10:00)"
    response = await h.client.post("/api/v1/notifiers/chat/test")
    assert response.status == 200 and (await response.json())["delivered"] is True
    assert json.loads(hook.delivered[-1])["test"] is True
    response = await h.client.post("/api/v1/notifiers/down/test")
    problem = await response.json()
    assert response.status == 502 and problem["detail"].startswith("notifier 'down': ClientConnector")
    assert (await h.client.post("/api/v1/notifiers/nope/test")).status == 404


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_alerts_are_a_notifier_with_their_own_payload_beside_others(start_daemon: Any, hook: Hook) -> None:
    h = await start_daemon(
        {"fail": {**FAILS, "alert_after_failures": 1, "notify": {"on_failure": ["chat"]}}},
        notifiers={"chat": webhook(hook.url + "?notifier")},
        alerts={"webhook_url": hook.url + "?alert", "webhook_retries": 0},
    )
    run = await h.trigger("fail")
    await h.finished(run["id"])
    found = await settled(h, "?job=fail", count=2)
    assert sorted(n["notifier"] for n in found) == ["alerts", "chat"]
    assert len(hook.delivered) == 2
    alert = next(json.loads(b) for b in hook.delivered if "kind" in json.loads(b))
    assert set(alert) == {"kind", "job", "run_id", "error", "consecutive_failures", "text"}
    assert (alert["kind"], alert["run_id"], alert["consecutive_failures"]) == ("failure", run["id"], 1)


# -- the config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            {"jobs": {"j": {**NOOP, "notify": {"on_failure": ["nope"]}}}},
            "jobs.j.notify.on_failure[0]: no notifier 'nope' ([notifiers.NAME]; none configured)",
        ),
        ({"defaults": {"notify": {"on_fail": []}}}, "defaults.notify.on_fail: unknown key"),
        ({"notifiers": {"x": {"kind": "sms"}}}, "notifiers.x.kind: 'sms' is not one of webhook, email, command"),
        (
            {"notifiers": {"x": {"kind": "webhook", "url": "http://h/", "body": {"t": "$jobname"}}}},
            "notifiers.x.body.t: unknown field $jobname",
        ),
        (
            {"notifiers": {"x": {"kind": "email", "host": "h", "from": "a@b", "to": ["c@d"], "password_env": "P"}}},
            "notifiers.x.password_env: environment variable P is not set",
        ),
        ({"notifiers": {"x": {"kind": "command"}}}, "notifiers.x.argv: required"),
    ],
)
def test_config_refusals_name_the_key(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


def test_a_password_file_and_the_job_lists_replace_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "smtp").write_text("s3cret\n")
    config = parse(
        {
            "notifiers": {
                "mail": {
                    "kind": "email",
                    "host": "smtp.example.com",
                    "starttls": True,
                    "user": "jobd",
                    "password_file": str(tmp_path / "smtp"),
                    "from": "jobd@example.com",
                    "to": ["ops@example.com"],
                },
                "hook": {"kind": "webhook", "url": "https://chat.example.com/x"},
            },
            "defaults": {"notify": {"on_failure": ["mail"], "on_start": ["hook"]}},
            "jobs": {"j": {**NOOP, "notify": {"on_failure": ["hook"]}}, "k": NOOP},
        }
    )
    mail = config.notifiers["mail"]
    assert (mail.port, mail.password, mail.starttls) == (587, "s3cret", True)
    assert "s3cret" not in repr(mail)
    assert config.jobs["j"].notify.on_failure == ("hook",) and config.jobs["j"].notify.on_start == ("hook",)
    assert config.jobs["k"].notify.on_failure == ("mail",)
    assert config.warnings == ()
    unused = parse({"notifiers": {"spare": {"kind": "command", "argv": ["true"]}}})
    assert unused.warnings == ("notifiers.spare: no job's notify names it (only jobd notify-test reaches it)",)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_retention_trims_settled_notifications_and_keeps_pending_ones(start_daemon: Any, hook: Hook) -> None:
    down = "http://127.0.0.1:9/hook"  # nothing listens: refused, and the next attempt is an hour away
    h = await start_daemon(
        {"noop": {**NOOP, "notify": {"on_success": ["chat", "slow"]}}},
        notifiers={"chat": webhook(hook.url), "slow": webhook(down, retry_backoff_s=3600)},
        retention={"days": 1, "failed_days": 1},
    )
    await h.finished((await h.trigger("noop"))["id"])
    await settled(h, "?status=delivered")
    [pending] = await wait_for(lambda: _tried(h), timeout=20)
    assert pending["notifier"] == "slow" and pending["last_error"].startswith("ClientConnectorError")
    h.daemon.retention.clock = lambda: now_ms() + 2 * 86_400_000
    result = await h.daemon.retention.sweep()
    assert result.notifications == 1
    assert [n["notifier"] for n in await notifications(h)] == ["slow"]


async def _tried(h: Any) -> list[dict[str, Any]] | None:
    pending = await notifications(h, "?status=pending")
    return pending if pending and pending[0]["attempts"] == 1 else None


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_an_endpoint_that_hangs_delays_no_run(start_daemon: Any, tmp_path: Path) -> None:
    started = tmp_path / "started"
    script = f"echo >> {started}; sleep 30"
    hang = {"kind": "command", "argv": ["/bin/sh", "-c", script], "timeout_s": 60}
    h = await start_daemon(
        {"noop": {**NOOP, "overlap": "allow", "max_concurrency": 4, "notify": {"on_success": ["hang"]}}},
        notifiers={"hang": hang},
    )
    runs = [await h.trigger("noop") for _ in range(12)]
    for run in runs:
        assert (await h.finished(run["id"])).status is RunStatus.COMPLETED
    deliverer = h.daemon.notifications.deliverer
    await wait_for(
        lambda: started.exists() and len(started.read_text().splitlines()) == deliverer.concurrency, timeout=20
    )
    assert len(await notifications(h, "?status=pending")) == 12  # 8 in flight, 4 waiting for a slot
