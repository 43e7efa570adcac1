"""Python handlers for the tests of groups and priorities (referenced as "group_jobs:name").

`counted` records, while it runs, how many runs of each group it was told of run at once and in
which order runs started; `gated` runs until the test sets its release. A test clears `Seen` with
the `seen` fixture of its module.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any


class Seen:
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    started: list[int] = []
    releases: dict[int, asyncio.Event] = {}

    @classmethod
    def clear(cls) -> None:
        cls.running.clear()
        cls.peak.clear()
        cls.started.clear()
        cls.releases.clear()


async def counted(ctx: Any, params: dict[str, Any]) -> None:
    groups = params.get("groups", [])
    Seen.started.append(ctx.run_id)
    for group in groups:
        Seen.running[group] += 1
        Seen.peak[group] = max(Seen.peak[group], Seen.running[group])
    try:
        await asyncio.sleep(float(params.get("hold_s", 0.01)))
    finally:
        for group in groups:
            Seen.running[group] -= 1


async def gated(ctx: Any, params: dict[str, Any]) -> None:
    Seen.started.append(ctx.run_id)
    await Seen.releases.setdefault(ctx.run_id, asyncio.Event()).wait()
