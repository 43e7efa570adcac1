"""Python handlers: async ones on the event loop, plain functions on a daemon thread each."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from jobd.config import ConfigError, JobConfig
from jobd.models import Run
from jobd.runner.context import RunContext, utf8_safe
from jobd.runner.reporting import Outcome, RunReporter, timeout_error
from jobd.runner.waiting import ended

LEFT_BEHIND = "the handler ignored its cancellation and was left behind"


async def run_handler(
    job: JobConfig, run: Run, reporter: RunReporter, *, grace_s: float, secrets: Mapping[str, str] | None = None
) -> Outcome:
    try:
        handler = job.resolve_handler()
    except ConfigError as unresolvable:
        return Outcome(error=str(unresolvable))
    loop = asyncio.get_running_loop()
    ctx = RunContext(run, job, reporter, loop, secrets=secrets)
    # loop.create_task(), not ensure_future(): that first works out what it was given, on every run.
    if _is_async(handler):
        call = loop.create_task(_call_async(handler, ctx, run.params))
    else:
        call = loop.create_task(_in_daemon_thread(_call_sync, handler, ctx, run.params, name=f"run-{run.id}"))
    cancelled, stopping = True, False
    try:
        if not await ended(call, job.timeout_s):
            stopping = True
            error = timeout_error(job.timeout_s)
            if not await _stop_call(call, grace_s):
                error += "; " + LEFT_BEHIND
            return Outcome(timed_out=True, error=error)
        value, raised = call.result()
        cancelled = False
    except asyncio.CancelledError:
        # Cancelled again while stopping: it is left behind at once.
        if not stopping and not await _stop_call(call, grace_s):
            reporter.log(LEFT_BEHIND, "handler")
        raise
    finally:
        ctx._stop(cancelled=cancelled)  # not public: handlers are given ctx

    if raised is not None:
        _log_traceback(reporter, raised)
        message = utf8_safe(str(raised))
        return Outcome(error=f"{type(raised).__name__}: {message}" if message else type(raised).__name__, raised=raised)
    try:
        if value is not None:
            _strict_json(value)
    except (TypeError, ValueError) as json_exc:
        return Outcome(error=f"result is not JSON serialisable: {json_exc}")
    return Outcome(result=value)


async def _stop_call(call: asyncio.Future[Any], grace_s: float) -> bool:
    """Cancel a handler's call and give it `grace_s` to end; False when it is still running.

    A coroutine that swallows its cancellation cannot be killed like a process; after the grace
    the run stops waiting for it (as for a thread, which cannot be interrupted at all), so that
    it does not hold its worker, or a cancel request, forever. Its reports are dropped from then on.
    """
    call.cancel()
    try:
        await ended(call, grace_s)
    finally:
        if not call.done():
            call.add_done_callback(_ignore_outcome)
    return call.done()


def _ignore_outcome(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved, so that a late failure is not reported as never retrieved


_strict_json = json.JSONEncoder(allow_nan=False).encode  # one encoder, not one per json.dumps() call


@functools.lru_cache(maxsize=4096)  # inspected once per handler, not once per run
def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 (an object whose __call__ is async)


# The two callers return the handler's exception instead of raising it, so that a handler's own
# TimeoutError is never mistaken for the run's timeout, and so its traceback starts here.
async def _call_async(fn: Callable[..., Any], ctx: RunContext, params: Any) -> tuple[Any, BaseException | None]:
    try:
        return await fn(ctx, params), None
    except (Exception, SystemExit) as exc:
        return None, exc


def _call_sync(fn: Callable[..., Any], ctx: RunContext, params: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(ctx, params), None
    except (Exception, SystemExit) as exc:
        return None, exc


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any, name: str) -> Any:
    """Like asyncio.to_thread, on a daemon thread of its own. A plain function cannot be stopped:
    when its run is interrupted it is abandoned, and a daemon thread, unlike the default
    executor's, does not hold up jobd's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, exc: BaseException | None) -> None:
        if future.done():  # the run was cancelled or timed out meanwhile
            return
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    def target() -> None:
        value, exc = None, None
        try:
            value = context.run(fn, *args)
        except BaseException as caught:  # handed to the awaiting task, like to_thread does
            exc = caught
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop has closed: nobody waits for this run any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def _log_traceback(reporter: RunReporter, exc: BaseException) -> None:
    handler_frames = exc.__traceback__.tb_next if exc.__traceback__ else None  # skip _call_*
    for chunk in traceback.format_exception(type(exc), exc, handler_frames):
        for line in utf8_safe(chunk).rstrip("\n").split("\n"):
            reporter.log(line, "handler")
