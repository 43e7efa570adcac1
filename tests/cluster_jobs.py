"""Python job handlers for the cluster tests (tests/test_cluster_processes.py,
tests/test_cluster_faults.py): each execution
leaves a line "run_id pid" in the file named by CLUSTER_OUT, the pid naming the node."""

from __future__ import annotations

import asyncio
import os
from typing import Any


def _record(run_id: int) -> None:
    with open(os.environ["CLUSTER_OUT"], "a") as out:
        out.write(f"{run_id} {os.getpid()}\n")


async def record(ctx: Any, params: dict[str, Any]) -> None:
    _record(ctx.run_id)


async def record_then_sleep(ctx: Any, params: dict[str, Any]) -> None:
    """Sleeps `seconds` (default 60); a retry sleeps `retry_seconds` if given."""
    _record(ctx.run_id)
    seconds = params.get("seconds", 60)
    if ctx.attempt > 1:
        seconds = params.get("retry_seconds", seconds)
    await asyncio.sleep(float(seconds))


async def record_then_pause(ctx: Any, params: dict[str, Any]) -> None:
    """A cron job's run that lasts past the next second (its fires have no params)."""
    _record(ctx.run_id)
    await asyncio.sleep(1.5)
