"""Python job handlers for the cluster operations tests (tests/test_cluster_ops.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any


async def talk(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Log `lines` numbered lines, `pause` seconds apart, then say which process ran it."""
    for n in range(int(params.get("lines", 3))):
        ctx.log(f"line {n} of run {ctx.run_id}")
        await asyncio.sleep(float(params.get("pause", 0)))
    return {"pid": os.getpid()}


async def fail(ctx: Any, params: dict[str, Any]) -> None:
    raise RuntimeError(f"failed on {os.getpid()}")


async def hang(ctx: Any, params: dict[str, Any]) -> None:
    await asyncio.sleep(3600)
