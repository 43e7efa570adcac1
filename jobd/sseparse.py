"""Reading a text/event-stream as a client does: an incremental parser, and the backoff between
reconnections (jobd.client's watch() uses both)."""

from __future__ import annotations

import random


class SSEParser:
    """An incremental text/event-stream parser: feed it bytes, get (id, data) of whole messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buffer += chunk
        messages: list[tuple[str | None, str]] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = self._buffer[start:end].rstrip(b"\r").decode("utf-8", errors="replace")
            start = end + 1
            if not line:
                if self._data:
                    messages.append((self._id, "\n".join(self._data)))
                self._data = []
                self._id = None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "id":
                self._id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        del self._buffer[:start]
        return messages


def backoff_s(failures: int, max_backoff: float, base: float = 0.25) -> float:
    """Exponential backoff with jitter: about base·2^(failures-1), at most `max_backoff`."""
    delay = min(max_backoff, base * (2.0 ** min(failures - 1, 20)))
    return delay * random.uniform(0.5, 1.0)
