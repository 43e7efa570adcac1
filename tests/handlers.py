"""Python job handlers for tests/test_runner_handlers.py (referenced as "tests.handlers:name")."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any


async def report_async(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    ctx.progress(25, "a quarter")
    ctx.counts(total=4, success=1)
    ctx.log("hello", 42)
    ctx.log("two\nlines")
    ctx.progress(180)
    return {"params": params, "job": ctx.job, "run_id": ctx.run_id, "attempt": ctx.attempt}


def report_sync(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    ctx.progress(25, "a quarter")
    ctx.counts(total=4, success=1)
    ctx.log("hello", 42)
    ctx.log("two\nlines")
    ctx.progress(180)
    return {
        "params": params,
        "job": ctx.job,
        "run_id": ctx.run_id,
        "attempt": ctx.attempt,
        "thread": threading.get_ident(),
    }


def _check(value: int) -> None:
    if value < 0:
        raise ValueError(f"bad input {value}")


async def fail_async(ctx: Any, params: dict[str, Any]) -> None:
    ctx.log("about to fail")
    _check(-1)


def fail_sync(ctx: Any, params: dict[str, Any]) -> None:
    _check(-2)


def raise_timeout_error(ctx: Any, params: dict[str, Any]) -> None:
    raise TimeoutError("the handler's own timeout")


def exit_sync(ctx: Any, params: dict[str, Any]) -> None:
    raise SystemExit(3)


def bad_counts(ctx: Any, params: dict[str, Any]) -> None:
    ctx.counts(success=-1)


def huge_counts(ctx: Any, params: dict[str, Any]) -> None:
    ctx.counts(total=10**30)  # more than a 64-bit column holds


def return_object(ctx: Any, params: dict[str, Any]) -> Any:
    return {"when": object()}


async def return_nan(ctx: Any, params: dict[str, Any]) -> Any:
    return [float("nan")]


async def wait_forever_async(ctx: Any, params: dict[str, Any]) -> None:
    ctx.log("started")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        params["events"].append("cancelled")
        raise


def wait_for_cancel_sync(ctx: Any, params: dict[str, Any]) -> None:
    """A cooperative long-running function: stops once the run is cancelled or timed out."""
    ctx.log("started")
    while not ctx.cancelled:
        time.sleep(0.005)
    ctx.log("after cancel")
    params["stopped"].set()


not_callable = 42
