"""Small Python handlers used by jobd.toml.example, the benchmarks and the docs.

A handler takes the run's context and its params; what it returns is the run's result.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def noop(ctx: Any, params: dict[str, Any]) -> None:
    """Returns at once: the cheapest possible run."""
    return None


async def count_items(ctx: Any, params: dict[str, Any]) -> dict[str, int]:
    """Processes `items` fake items (default 20), `delay_s` apart, reporting progress and counts."""
    total = int(params.get("items", 20))
    delay = float(params.get("delay_s", 0.1))
    ctx.counts(total=total)
    failed = 0
    for done in range(1, total + 1):
        await asyncio.sleep(delay)
        if params.get("fail_every") and done % int(params["fail_every"]) == 0:
            failed += 1
        ctx.counts(success=done - failed, failed=failed)
        ctx.progress(100 * done / total, f"item {done} of {total}")
    return {"processed": total, "failed": failed}
