"""Stream test helpers: a small Server-Sent Events reader that reads a real response line by
line, and a daemon served on a real port the way `jobd serve` serves it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import wait_for
from sse_jobs import control

from jobd.app import Daemon
from jobd.web import create_app
from jobd.web.sse import RUN_STATES


@dataclasses.dataclass
class Message:
    id: int | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return self.data["type"]


class SSEReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.retry: int | None = None
        self.heartbeats = 0
        self.messages: list[Message] = []

    async def next(self, timeout: float = 10.0) -> Message | None:
        """The next message; None at the end of the stream."""
        event_id: str | None = None
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        message = Message(None if event_id is None else int(event_id), json.loads("\n".join(data)))
                        self.messages.append(message)
                        return message
                    event_id = None
                    continue
                if line.startswith(":"):
                    self.heartbeats += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
                elif name == "retry":
                    self.retry = int(value)
                else:
                    raise AssertionError(f"unexpected field {name!r} in {line!r}")

    async def until(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> list[Message]:
        """Messages up to and including the first one that satisfies `predicate`."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next(timeout)
                assert message is not None, f"stream ended before the expected message; got {seen}"
                seen.append(message)
                if predicate(message):
                    return seen

    async def rest(self, timeout: float = 10.0) -> list[Message]:
        """Every message until the stream ends."""
        seen = []
        async with asyncio.timeout(timeout):
            while (message := await self.next(timeout)) is not None:
                seen.append(message)
        return seen


STEPPER = {"handler": "sse_jobs:stepper", "overlap": "allow", "max_concurrency": 10}
NOOP = {"handler": "sample_jobs:noop"}
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


@dataclasses.dataclass
class Served:
    daemon: Daemon
    app: web.Application
    runner: web.AppRunner
    session: aiohttp.ClientSession
    url: str
    stopped: bool = False

    async def trigger(
        self, job: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        async with self.session.post(
            f"/api/v1/jobs/{job}/trigger", json={"params": params or {}}, headers=headers
        ) as response:
            assert response.status == 202, await response.text()
            return (await response.json())["run"]

    async def stepper(self, headers: dict[str, str] | None = None) -> tuple[int, asyncio.Queue[Any]]:
        """A run that does what the test puts in its queue, started and PROCESSING."""
        key = uuid.uuid4().hex
        queue = control(key)
        run = await self.trigger("step", {"key": key}, headers=headers)
        await self.processing(run["id"])
        return run["id"], queue

    async def processing(self, run_id: int) -> None:
        """Until PROCESSING is committed and published (the in-memory run is a step ahead)."""
        states = self.app[RUN_STATES].latest
        await wait_for(lambda: run_id in states and states[run_id].status == "PROCESSING")

    async def open(self, path: str, headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, SSEReader]:
        response = await self.session.get(path, headers=headers, timeout=NO_TIMEOUT)
        return response, SSEReader(response)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@pytest.fixture
async def serve(make_config):
    started: list[Served] = []

    async def start(jobs: dict[str, Any] | None = None, *, log: Any = None, **sections: Any) -> Served:
        daemon = Daemon(
            make_config(jobs or {"step": STEPPER, "noop": NOOP}, **sections), environ={"PATH": "/usr/bin:/bin"}, log=log
        )
        app = create_app(daemon)
        # As `jobd serve` runs it: no handler cancellation on disconnect.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        served = Served(daemon, app, runner, aiohttp.ClientSession(url), url)
        started.append(served)
        return served

    yield start
    for served in started:
        await served.session.close()
        await served.stop()
