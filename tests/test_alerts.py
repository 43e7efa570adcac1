from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from aiohttp import web
from structlog.testing import LogCapture

from jobd.alerts import Alerter, describe_failure
from jobd.config import AlertsConfig, JobConfig
from jobd.models import Run, RunStatus, TriggerSource
from jobd.store import JobState

JOB = JobConfig(name="backup", command=("backup.sh",), alert_after_failures=3)


def streak(job: JobConfig, failures: int) -> JobState:
    """The job's state after a run: its current run of consecutive failures."""
    return JobState(job.name, consecutive_failures=failures)


def make_run(run_id: int, status: RunStatus = RunStatus.FAILED, **fields: Any) -> Run:
    if status is RunStatus.FAILED:
        fields = {"exit_code": 1, "error": "boom", **fields}
    return Run(
        id=run_id,
        job=fields.pop("job", "backup"),
        status=status,
        triggered_by=TriggerSource.CRON,
        created_at=0,
        **fields,
    )


class Receiver:
    """A webhook endpoint: records every JSON body; answers with queued statuses, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.statuses: list[int] = []
        self.hang = False
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.arrivals.put_nowait(body)
        if self.hang:
            await self.release.wait()
        return web.json_response({"ok": True}, status=self.statuses.pop(0) if self.statuses else 200)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.arrivals.get(), 5.0)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hook"))
    yield r
    r.release.set()  # let hanging handlers finish so the server can stop


MakeAlerter = Callable[..., Awaitable[tuple[Alerter, LogCapture]]]


@pytest.fixture
async def make_alerter() -> AsyncIterator[MakeAlerter]:
    alerters: list[Alerter] = []

    async def make(
        url: str | None, *, retries: int = 2, timeout_s: float = 5.0, **options: Any
    ) -> tuple[Alerter, LogCapture]:
        capture = LogCapture()
        log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[capture])
        config = AlertsConfig(webhook_url=url, webhook_timeout_s=timeout_s, webhook_retries=retries)
        alerter = Alerter(config, log=log, **{"backoff_s": 0.001, **options})
        await alerter.start()
        alerters.append(alerter)
        return alerter, capture

    yield make
    for alerter in alerters:
        await alerter.close()


def events(capture: LogCapture, name: str) -> list[dict[str, Any]]:
    return [entry for entry in capture.entries if entry["event"] == name]


def fail_streak(alerter: Alerter, first_id: int, count: int, job: JobConfig = JOB) -> None:
    for n in range(1, count + 1):
        alerter.run_finished(job, make_run(first_id + n - 1, job=job.name), streak(job, n), n - 1)


async def test_alert_is_sent_once_when_the_threshold_is_reached(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    alerter, capture = await make_alerter(receiver.url)
    fail_streak(alerter, 40, 4)  # runs 40..43; the third (run 42) reaches 3
    await alerter.close()  # waits for in-flight deliveries
    assert receiver.bodies == [
        {
            "kind": "failure",
            "job": "backup",
            "run_id": 42,
            "error": "boom",
            "consecutive_failures": 3,
            "text": "jobd: job 'backup' failed 3 times in a row (last: run 42: exit code 1: boom)",
        }
    ]
    assert (alerter.sent, alerter.failed) == (1, 0)
    [alert] = events(capture, "job_alert")
    assert alert["log_level"] == "error"
    assert (alert["job"], alert["run_id"], alert["consecutive_failures"]) == ("backup", 42, 3)


async def test_recovery_follows_an_alert(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    alerter, capture = await make_alerter(receiver.url)
    fail_streak(alerter, 40, 3)
    assert (await receiver.next())["kind"] == "failure"
    alerter.run_finished(JOB, make_run(43, RunStatus.COMPLETED), streak(JOB, 0), 3)
    assert await receiver.next() == {
        "kind": "recovery",
        "job": "backup",
        "run_id": 43,
        "status": "completed",
        "previous_failures": 3,
        "text": "jobd: job 'backup' recovered (run 43 completed)",
    }
    await alerter.close()
    assert (alerter.sent, alerter.failed) == (2, 0)
    [recovered] = events(capture, "job_recovered")
    assert recovered["log_level"] == "warning"


async def test_partial_run_counts_as_recovery(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    alerter, _ = await make_alerter(receiver.url)
    alerter.run_finished(JOB, make_run(50, RunStatus.PARTIAL), streak(JOB, 0), 7)
    body = await receiver.next()
    assert (body["kind"], body["text"]) == ("recovery", "jobd: job 'backup' recovered (run 50 partial)")


async def test_no_messages_below_the_threshold(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    alerter, capture = await make_alerter(receiver.url)
    fail_streak(alerter, 1, 2)
    alerter.run_finished(JOB, make_run(3, RunStatus.COMPLETED), streak(JOB, 0), 2)
    alerter.run_finished(JOB, make_run(4, RunStatus.CANCELLED), streak(JOB, 0), 0)
    await alerter.close()
    assert receiver.bodies == []
    assert events(capture, "job_alert") == [] and events(capture, "job_recovered") == []


async def test_threshold_is_per_job(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    touchy = JobConfig(name="touchy", command=("x",), alert_after_failures=1)
    alerter, _ = await make_alerter(receiver.url)
    timed_out = make_run(7, job="touchy", exit_code=None, error="timed out after 5 s")
    alerter.run_finished(touchy, timed_out, streak(touchy, 1), 0)
    body = await receiver.next()
    assert body["text"] == "jobd: job 'touchy' failed (run 7: timed out after 5 s)"


async def test_retries_after_a_server_error(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    receiver.statuses = [500]
    alerter, capture = await make_alerter(receiver.url, retries=2)
    fail_streak(alerter, 1, 3)
    await alerter.close()
    assert [b["run_id"] for b in receiver.bodies] == [3, 3]
    assert (alerter.sent, alerter.failed) == (1, 0)
    assert events(capture, "alert_webhook_failed") == []


async def test_client_error_is_not_retried(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    receiver.statuses = [400, 400, 400]
    alerter, capture = await make_alerter(receiver.url, retries=2)
    fail_streak(alerter, 1, 3)
    await alerter.close()
    assert len(receiver.bodies) == 1
    assert (alerter.sent, alerter.failed) == (0, 1)
    [failed] = events(capture, "alert_webhook_failed")
    assert (failed["error"], failed["attempts"]) == ("HTTP 400", 1)


async def test_receiver_down_never_blocks_or_raises(make_alerter: MakeAlerter) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        alerter, capture = await make_alerter(f"http://127.0.0.1:{closed.getsockname()[1]}/hook", retries=2)
        fail_streak(alerter, 1, 3)
        alerter.run_finished(JOB, make_run(4, RunStatus.COMPLETED), streak(JOB, 0), 3)
        await asyncio.wait_for(alerter.close(), 5.0)
    assert (alerter.sent, alerter.failed) == (0, 2)
    attempts = [entry["attempts"] for entry in events(capture, "alert_webhook_failed")]
    assert attempts == [3, 3]


async def test_close_cuts_off_a_hanging_webhook(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    receiver.hang = True
    alerter, capture = await make_alerter(receiver.url, timeout_s=60.0, close_timeout_s=0.05)
    fail_streak(alerter, 1, 3)
    await receiver.next()  # the request is in flight and will not be answered
    await asyncio.wait_for(alerter.close(), 5.0)
    assert (alerter.sent, alerter.failed) == (0, 1)
    assert len(events(capture, "alert_webhook_cancelled")) == 1


async def test_in_flight_deliveries_are_bounded(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    receiver.hang = True
    alerter, capture = await make_alerter(receiver.url, timeout_s=60.0, close_timeout_s=0.05, max_in_flight=2)
    for name in ("a", "b", "c"):
        fail_streak(alerter, 1, 3, JobConfig(name=name, command=("x",), alert_after_failures=3))
    [dropped] = events(capture, "alert_webhook_dropped")
    assert dropped["job"] == "c"
    assert {(await receiver.next())["job"] for _ in range(2)} == {"a", "b"}
    await asyncio.wait_for(alerter.close(), 5.0)
    assert (alerter.sent, alerter.failed) == (0, 3)


async def test_without_webhook_only_logs(receiver: Receiver, make_alerter: MakeAlerter) -> None:
    alerter, capture = await make_alerter(None)
    fail_streak(alerter, 1, 3)
    alerter.run_finished(JOB, make_run(4, RunStatus.COMPLETED), streak(JOB, 0), 3)
    await alerter.close()
    assert [e["event"] for e in capture.entries] == ["job_alert", "job_recovered"]
    assert (alerter.sent, alerter.failed) == (0, 0)


async def test_not_started_or_closed_alerter_logs_and_skips(receiver: Receiver) -> None:
    capture = LogCapture()
    log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[capture])
    alerter = Alerter(AlertsConfig(webhook_url=receiver.url), log=log)
    fail_streak(alerter, 1, 3)  # before start()
    await alerter.start()
    await alerter.close()
    fail_streak(alerter, 4, 3)  # after close()
    assert receiver.bodies == []
    assert len(events(capture, "job_alert")) == 2
    assert len(events(capture, "alert_webhook_skipped")) == 2


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
    assert describe_failure(make_run(9, **fields)) == expected


async def test_a_daemon_alerts_on_a_failure_streak_and_its_end(
    receiver: Receiver, start_daemon: Any, tmp_path: Any
) -> None:
    flag = tmp_path / "healthy"
    h = await start_daemon(
        {"flaky": {"shell": f"test -e {flag} || {{ echo 'disk full' >&2; exit 1; }}", "alert_after_failures": 2}},
        alerts={"webhook_url": receiver.url, "webhook_retries": 0},
    )
    first = await h.trigger("flaky")
    await h.finished(first["id"])
    second = await h.trigger("flaky")
    await h.finished(second["id"])
    alert = await receiver.next()
    assert alert == {
        "kind": "failure",
        "job": "flaky",
        "run_id": second["id"],
        "error": "exit code 1: disk full",
        "consecutive_failures": 2,
        "text": f"jobd: job 'flaky' failed 2 times in a row (last: run {second['id']}: exit code 1: disk full)",
    }
    flag.touch()
    healed = await h.trigger("flaky")
    await h.finished(healed["id"])
    recovery = await receiver.next()
    assert recovery["kind"] == "recovery" and recovery["run_id"] == healed["id"]
    assert recovery["previous_failures"] == 2 and "recovered" in recovery["text"]
    assert len(receiver.bodies) == 2
