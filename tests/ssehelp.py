"""A small Server-Sent Events reader for tests: reads a real response line by line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import aiohttp


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
