"""jobd.runner.handlers: Python handlers, async and plain, their reports, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from jobd.config import JobConfig
from jobd.runner import Outcome, execute
from tests.runner_helpers import GRACE, Recorder, make_run, run_job


def handler_job(name: str, **fields: Any) -> JobConfig:
    return JobConfig(name="t", handler=f"tests.handlers:{name}", **fields)


@pytest.mark.parametrize("name", ["report_async", "report_sync"])
async def test_handler_reports_and_returns(name: str) -> None:
    run = make_run(id=9, attempt=3, params={"n": 1})

    outcome, rec = await run_job(handler_job(name), run)

    assert outcome.error is None and not outcome.timed_out
    result = outcome.result
    thread = result.pop("thread", None)
    assert result == {"params": {"n": 1}, "job": "t", "run_id": 9, "attempt": 3}
    assert rec.calls == [
        ("progress", 25.0, "a quarter"),
        ("counts", {"total": 4, "success": 1}),
        ("log", "handler", "hello 42"),
        ("log", "handler", "two"),
        ("log", "handler", "lines"),
        ("progress", 100.0, None),
    ]
    # Reports from a handler thread still reach the reporter on the loop's thread.
    assert rec.threads == {threading.get_ident()}
    if name == "report_sync":
        assert thread is not None and thread != threading.get_ident()


@pytest.mark.parametrize(
    "name, message", [("fail_async", "ValueError: bad input -1"), ("fail_sync", "ValueError: bad input -2")]
)
async def test_handler_exception_fails_the_run_with_a_traceback(name: str, message: str) -> None:
    outcome, rec = await run_job(handler_job(name))

    assert outcome == Outcome(error=message)
    trace = rec.lines("handler")
    assert "Traceback (most recent call last):" in trace
    assert trace[-1] == message
    assert any(f"in {name}" in line for line in trace)
    assert any("in _check" in line for line in trace)
    assert not any("_call_" in line for line in trace)


async def test_handler_raising_timeout_error_is_not_a_timeout() -> None:
    outcome, _ = await run_job(handler_job("raise_timeout_error", timeout_s=5))

    assert outcome == Outcome(error="TimeoutError: the handler's own timeout")


async def test_handler_calling_sys_exit_only_fails_the_run() -> None:
    outcome, _ = await run_job(handler_job("exit_sync"))

    assert outcome == Outcome(error="SystemExit: 3")


async def test_invalid_report_from_handler_fails_the_run() -> None:
    outcome, rec = await run_job(handler_job("bad_counts"))

    assert outcome.error == "ValueError: counts: success must be an integer from 0 to 999999999999999999, not -1"
    assert rec.of("counts") == []
    outcome, rec = await run_job(handler_job("huge_counts"))
    assert outcome.error == f"ValueError: counts: total must be an integer from 0 to 999999999999999999, not {10**30}"
    assert rec.of("counts") == []


@pytest.mark.parametrize("name", ["return_object", "return_nan"])
async def test_result_must_be_json(name: str) -> None:
    outcome, _ = await run_job(handler_job(name))

    assert outcome.result is None
    assert outcome.error is not None and outcome.error.startswith("result is not JSON serialisable: ")


@pytest.mark.parametrize("name", ["missing", "not_callable"])
async def test_unresolvable_handler(name: str) -> None:
    outcome, rec = await run_job(handler_job(name))

    assert outcome.error is not None and outcome.error.startswith("jobs.t.handler: ")
    assert rec.calls == []


async def test_async_handler_timeout_cancels_it() -> None:
    events: list[str] = []

    outcome, rec = await run_job(handler_job("wait_forever_async", timeout_s=0.3), make_run(params={"events": events}))

    assert outcome == Outcome(timed_out=True, error="timed out after 0.3s")
    assert events == ["cancelled"]


async def test_sync_handler_timeout_sets_cancelled_and_drops_later_reports() -> None:
    stopped = threading.Event()

    outcome, rec = await run_job(
        handler_job("wait_for_cancel_sync", timeout_s=0.3), make_run(params={"stopped": stopped})
    )

    assert outcome == Outcome(timed_out=True, error="timed out after 0.3s")
    assert await asyncio.to_thread(stopped.wait, 5)
    assert rec.lines("handler") == ["started"]


async def test_cancelling_an_async_handler() -> None:
    events: list[str] = []
    rec = Recorder()
    run = make_run(params={"events": events})
    task = asyncio.create_task(execute(handler_job("wait_forever_async"), run, rec, kill_grace_s=GRACE, environ={}))
    await rec.wait_for(lambda: rec.lines("handler"))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert events == ["cancelled"]


async def test_cancelling_a_sync_handler_sets_cancelled() -> None:
    stopped = threading.Event()
    rec = Recorder()
    run = make_run(params={"stopped": stopped})
    task = asyncio.create_task(execute(handler_job("wait_for_cancel_sync"), run, rec, kill_grace_s=GRACE, environ={}))
    await rec.wait_for(lambda: rec.lines("handler"))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(stopped.wait, 5)
    assert rec.lines("handler") == ["started"]
