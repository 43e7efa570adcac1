"""Idempotency keys: one run per (job, key) within a day, however many requests carry it.

Concurrent requests with the same key share the first one's answer rather than racing it to the
store; later ones find the key there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000

T = TypeVar("T")


def window_start(now: int) -> int:
    """The oldest creation time of a key that still counts."""
    return now - IDEMPOTENCY_WINDOW_MS


class Coalescer(Generic[T]):
    """Runs one call per key at a time; callers arriving meanwhile get its result (or its error)."""

    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def once(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await make()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lone caller leaves no "never retrieved" warning
            raise
        finally:
            del self._in_flight[key]
