"""A child's output pipes, read line by line with a bound on a line's length."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import IO

MAX_LINE_BYTES = 64 * 1024
# After the process group is gone its pipes reach EOF at once; only a process that left the
# group (setsid) can hold them open. Wait this long for EOF, then stop reading anyway.
PIPE_DRAIN_S = 1.0


class Pipe:
    """One output pipe of a child. Owning the read end (rather than asyncio's PIPE) lets us close
    it even while a process that escaped the group still holds the write end."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport, write_fd: int) -> None:
        self.reader = reader
        self.transport = transport
        self.write_fd: int | None = write_fd

    @classmethod
    async def open(cls) -> Pipe:
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        try:
            read_file: IO[bytes] = open(read_fd, "rb", buffering=0)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), read_file
            )
        except BaseException:
            read_file.close()
            os.close(write_fd)
            raise
        return cls(reader, transport, write_fd)

    def close_write_end(self) -> None:
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def close(self) -> None:
        self.close_write_end()
        self.transport.close()


async def read_lines(reader: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    carry = b""  # the start of a character that a piece of a long line cut in two
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # EOF; the last line may lack its newline
            if carry or exc.partial:
                on_line(_decode(carry + exc.partial))
            return
        except asyncio.LimitOverrunError:
            # No newline within the limit: hand on one piece, ending between characters; the rest
            # follows as further lines.
            piece = carry + await reader.read(MAX_LINE_BYTES)
            cut = _whole_characters(piece)
            carry = piece[cut:]
            on_line(piece[:cut].decode("utf-8", errors="replace"))
            continue
        if carry:
            raw, carry = carry + raw, b""
        on_line(_decode(raw))


def _whole_characters(data: bytes) -> int:
    """Where `data` stops holding whole UTF-8 characters: its length, or the start of a last
    character whose remaining bytes have not been read yet."""
    start = len(data) - 1
    while start >= max(0, len(data) - 4) and data[start] & 0xC0 == 0x80:  # continuation bytes
        start -= 1
    if start < 0 or data[start] < 0xC0:
        return len(data)
    needed = 2 if data[start] < 0xE0 else 3 if data[start] < 0xF0 else 4
    return start if len(data) - start < needed else len(data)


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


async def finish_readers(readers: list[asyncio.Task[None]]) -> None:
    """Let the readers reach EOF (bounded), then make sure none is left running."""
    try:
        await asyncio.wait(readers, timeout=PIPE_DRAIN_S)
    finally:
        for task in readers:
            task.cancel()
        results = await asyncio.gather(*readers, return_exceptions=True)
    for item in results:
        if isinstance(item, Exception):  # a failing reporter is a bug of the caller: show it
            raise item
