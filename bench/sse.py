"""A light Server-Sent Events reader for the load generator.

It reads whole chunks off the response and splits them into messages itself (instead of a
readline per line), so the client spends as little CPU as it can: on a 2-core machine every
cycle the load generator burns is one the daemon does not get. Each message is stamped with the
monotonic time its chunk arrived.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


async def messages(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, dict[str, Any]]]:
    """(arrival time, data object) for every message with a `data:` line, until the stream ends."""
    buffer = b""
    async for chunk in response.content.iter_any():
        now = time.monotonic()
        buffer += chunk
        *complete, buffer = buffer.split(b"\n\n")
        for message in complete:
            for line in message.split(b"\n"):
                if line.startswith(b"data: "):
                    yield now, json.loads(line[6:])


class Firehose:
    """The firehose (`GET /api/v1/events`) read in a task; the caller awaits what it wants.

    `arrivals[(run_id, status)]` is when that status_update arrived; `wait(run_id, status)`
    returns it, waiting if it has not come yet.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, **filters: str) -> None:
        self.session = session
        self.url = url
        self.filters = filters
        self.arrivals: dict[tuple[int, str], float] = {}
        self.finished = 0
        self.last_finished_at = 0.0
        self.failed: list[dict[str, Any]] = []
        self.all_finished = asyncio.Event()
        self.expect_finished: int | None = None
        self._waiters: dict[tuple[int, str], asyncio.Future[float]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Firehose:
        self._task = asyncio.create_task(self._read())
        done, _ = await asyncio.wait(
            {self._task, asyncio.ensure_future(self._connected.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # raises what went wrong
            raise RuntimeError("the firehose ended before it connected")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _read(self) -> None:
        async with self.session.get(
            f"{self.url}/api/v1/events", params=self.filters, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"firehose: {response.status} {await response.text()}")
            async for arrived, data in messages(response):
                kind = data.get("type")
                if kind == "connected":
                    self._connected.set()
                elif kind == "status_update":
                    self._status(arrived, data)

    def _status(self, arrived: float, data: dict[str, Any]) -> None:
        key = (data["run_id"], data["status"])
        self.arrivals.setdefault(key, arrived)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrived)
        if data["status"] in ("COMPLETED", "PARTIAL", "FAILED", "CANCELLED"):
            self.finished += 1
            self.last_finished_at = arrived
            if data["status"] != "COMPLETED":
                self.failed.append(data)
            if self.expect_finished is not None and self.finished >= self.expect_finished:
                self.all_finished.set()

    async def wait(self, run_id: int, status: str, timeout: float = 30.0) -> float:
        key = (run_id, status)
        if key in self.arrivals:
            return self.arrivals[key]
        waiter = self._waiters.setdefault(key, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(timeout):
            return await asyncio.shield(waiter)

    async def wait_finished(self, count: int, timeout: float) -> float:
        """Until `count` runs have finished (any terminal status); returns the last arrival."""
        self.expect_finished = count
        self.all_finished.clear()
        if self.finished < count:
            assert self._task is not None
            finished = asyncio.ensure_future(self.all_finished.wait())
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.wait({finished, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                finished.cancel()
            if self.finished < count:
                self._task.result()  # what ended the stream, if it raised
                raise RuntimeError(f"the firehose ended after {self.finished} of {count} finished runs")
        return self.last_finished_at
