"""Python handlers that a test releases (referenced as "sched_jobs:name").

Cron fires carry no params, so a test reaches a running handler through `releases`, keyed by run
id. The test's daemon runs these handlers on the test's own event loop; conftest clears the dict after every test.
"""

from __future__ import annotations

import asyncio
from typing import Any

releases: dict[int, asyncio.Event] = {}


async def stubborn(ctx: Any, params: dict[str, Any]) -> None:
    """Runs until cancelled, then takes its time to stop: until the test sets releases[run_id]."""
    release = releases.setdefault(ctx.run_id, asyncio.Event())
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()  # a second cancellation (shutdown) ends this wait too
        raise


async def gated(ctx: Any, params: dict[str, Any]) -> str:
    """Runs until the test sets releases[run_id], then completes."""
    await releases.setdefault(ctx.run_id, asyncio.Event()).wait()
    return "released"


async def fails_when_released(ctx: Any, params: dict[str, Any]) -> None:
    """Runs until the test sets releases[run_id], then fails."""
    await releases.setdefault(ctx.run_id, asyncio.Event()).wait()
    raise RuntimeError("failed on release")
