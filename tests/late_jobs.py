"""Handlers and exceptions of the late/long-run and retry-rule tests."""

from __future__ import annotations

import asyncio
from typing import Any


class Transient(Exception):
    pass


class Flaky(Transient):
    pass


class Fatal(Exception):
    pass


NOT_AN_EXCEPTION = 42

_RAISES = {"transient": Transient, "flaky": Flaky, "fatal": Fatal, "value": ValueError}


async def raises(ctx: Any, params: dict[str, Any]) -> None:
    """Raises the exception its params name."""
    raise _RAISES[params.get("kind", "fatal")]("as asked")


async def sleeps(ctx: Any, params: dict[str, Any]) -> str:
    await asyncio.sleep(float(params.get("seconds", 30)))
    return "woke"
