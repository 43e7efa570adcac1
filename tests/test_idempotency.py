"""Idempotency: concurrent requests with one key share one answer; the window is a day."""

from __future__ import annotations

import asyncio

import pytest

from jobd.lifecycle.idempotency import IDEMPOTENCY_WINDOW_MS, Coalescer, window_start


async def test_concurrent_calls_with_one_key_share_the_first_ones_result() -> None:
    coalescer: Coalescer[int] = Coalescer()
    calls = []
    release = asyncio.Event()

    async def make() -> int:
        calls.append(1)
        number = len(calls)
        await release.wait()
        return number

    waiting = [asyncio.ensure_future(coalescer.once(("job", "k"), make)) for _ in range(5)]
    other = asyncio.ensure_future(coalescer.once(("job", "other"), make))
    await asyncio.sleep(0)
    assert len(coalescer) == 2
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert await other == 2 and len(calls) == 2 and len(coalescer) == 0
    # Once the first call is over, the next one with the key runs again (the store then answers it).
    assert await coalescer.once(("job", "k"), make) == 3


async def test_an_error_reaches_every_caller_waiting_and_leaves_nothing_behind() -> None:
    coalescer: Coalescer[int] = Coalescer()
    release = asyncio.Event()

    async def make() -> int:
        await release.wait()
        raise ValueError("refused")

    waiting = [asyncio.ensure_future(coalescer.once("k", make)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    for result in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(result, ValueError)
    assert len(coalescer) == 0
    with pytest.raises(ValueError):  # a lone caller gets the error, and no "never retrieved" warning
        await coalescer.once("k", make)


def test_the_window_is_a_day() -> None:
    assert IDEMPOTENCY_WINDOW_MS == 86_400_000
    assert window_start(100_000_000) == 100_000_000 - 86_400_000
