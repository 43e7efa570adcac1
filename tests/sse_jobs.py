"""Python handlers the stream tests drive step by step (referenced as "sse_jobs:name")."""

from __future__ import annotations

import asyncio
from typing import Any

# One command queue per key; a test puts steps in and the running handler carries them out.
CONTROL: dict[str, asyncio.Queue[Any]] = {}


def control(key: str) -> asyncio.Queue[Any]:
    return CONTROL.setdefault(key, asyncio.Queue())


async def stepper(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Steps: ("progress", pct, msg), ("log", text), ("fail", msg); None ends the run."""
    queue = control(params["key"])
    try:
        while (step := await queue.get()) is not None:
            kind, *args = step
            if kind == "progress":
                ctx.progress(*args)
            elif kind == "log":
                ctx.log(*args)
            elif kind == "fail":
                raise ValueError(args[0])
        return {"steps": "done"}
    finally:
        CONTROL.pop(params["key"], None)
