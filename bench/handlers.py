"""Python job handlers of the scenarios (jobd imports them: the daemons run with the repository
on PYTHONPATH)."""

from __future__ import annotations

import asyncio
from typing import Any


async def sleep(ctx: Any, params: dict[str, Any]) -> None:
    """A long run inside the daemon's own process: it dies with the daemon, leaving no child."""
    await asyncio.sleep(float(params.get("seconds", 600)))
