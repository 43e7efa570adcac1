"""Waiting for a task to end without taking its outcome."""

from __future__ import annotations

import asyncio
import functools
from typing import Any


async def ended(task: asyncio.Future[Any], timeout: float | None = None) -> bool:
    """Wait until `task` is done, whatever its outcome (True), or for `timeout` seconds (False);
    being cancelled leaves the task running. What asyncio.wait({task}, timeout=...) does, without
    its per-call checks of the argument, copy of the set and callback of its own."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    task.add_done_callback(functools.partial(_settle, waiter, True))
    if timeout is None:
        return await waiter
    timer = loop.call_later(timeout, _settle, waiter, False, None)
    try:
        return await waiter
    finally:
        timer.cancel()


def _settle(waiter: asyncio.Future[bool], value: bool, _: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)
