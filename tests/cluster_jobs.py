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
    _record(ctx.run_id)
    await asyncio.sleep(float(params.get("seconds", 60)))


async def record_then_pause(ctx: Any, params: dict[str, Any]) -> None:
    """A cron job's run that lasts past the next second (its fires have no params)."""
    _record(ctx.run_id)
    await asyncio.sleep(1.5)
