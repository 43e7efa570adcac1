"""Python handlers the tests run as jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def noop(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    return {"echo": params}


async def sleepy(ctx: Any, params: dict[str, Any]) -> str:
    ctx.progress(10, "started")
    await asyncio.sleep(float(params.get("seconds", 30)))
    return "woke"


async def fails(ctx: Any, params: dict[str, Any]) -> None:
    raise ValueError(params.get("message", "boom"))


async def surrogates(ctx: Any, params: dict[str, Any]) -> None:
    # Python strings may hold lone surrogates, which UTF-8 (the store, the log file) cannot.
    ctx.progress(10, "step \udcff")
    ctx.log("lone \ud800 here")
    if params.get("fail"):
        raise ValueError("bad \udcff")


async def partial(ctx: Any, params: dict[str, Any]) -> None:
    ctx.counts(total=3, success=2, failed=1)


def blocking(ctx: Any, params: dict[str, Any]) -> int:
    ctx.progress(50, "half way")
    return 42


started_order: list[Any] = []


async def record(ctx: Any, params: dict[str, Any]) -> None:
    """Notes the order in which runs start (params["i"])."""
    started_order.append(params.get("i"))


async def deaf(ctx: Any, params: dict[str, Any]) -> str:
    """Ignores its first cancellation (a broken handler); a second one ends it."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(3600)
    return "never"


async def stalls_the_loop_when_cancelled(ctx: Any, params: dict[str, Any]) -> None:
    """Blocking work in an async handler: once cancelled, it holds the event loop for a while."""
    ctx.log("started")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        time.sleep(float(params["block_s"]))
        raise
