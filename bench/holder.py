"""Holds many idle SSE streams open in a process of its own and reports when events reach them.

    python -m bench.holder --url http://127.0.0.1:PORT --path '/api/v1/events?...' --count 5000

Each stream is a raw socket read by a bare epoll loop (a few KB each, where an aiohttp client
response costs tens, and a few microseconds per event), so one process holds thousands. It speaks
JSON lines on stdout:

    {"ready": 5000, "open_s": 1.9}                 every stream has its `connected` message
    {"run": 42, "first": T0, "all": T1}            run 42's status_update reached the first / the
                                                   last of this process's streams (time.monotonic)
    {"error": "..."}                               a stream failed or closed; the holder gives up

and stops when its stdin closes. time.monotonic() is CLOCK_MONOTONIC, the same in every process,
so the parent can compare these times with its own. `HolderGroup` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import select
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from jobd.server import raise_open_files_limit

RUN_EVENT = re.compile(rb'"type":"status_update","run_id":(\d+)')
CONNECTED = b'"type":"connected"'
OPENING_AT_ONCE = 64  # streams connecting at once
PER_PROCESS = 5000


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Stream:
    __slots__ = ("partial", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = "head"  # head → opening → ready
        self.partial = b""


class Holder:
    """The streams of one process, read by a bare epoll loop: a recv() and a few comparisons per
    stream and event, so that the client's share of a delivery time stays small."""

    def __init__(self, address: tuple[str, int], request: bytes, count: int) -> None:
        self.address = address
        self.request = request
        self.count = count
        self.poll = select.epoll()
        self.streams: dict[int, _Stream] = {}
        self.ready = 0
        self.seen: dict[int, list[float]] = {}  # run id → [streams reached, first arrival]
        self.failed = False

    def open_one(self) -> None:
        sock = socket.create_connection(self.address)
        sock.sendall(self.request)
        sock.setblocking(False)
        self.streams[sock.fileno()] = _Stream(sock)
        self.poll.register(sock.fileno(), select.EPOLLIN)

    def fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            emit({"error": reason})

    def received(self, stream: _Stream, data: bytes, now: float) -> None:
        if not data:
            self.fail("a stream was closed by the daemon")
            return
        if stream.state == "head":
            if not data.startswith(b"HTTP/1.1 200"):
                self.fail("stream refused: " + data.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            stream.state = "opening"
        buffer = stream.partial + data if stream.partial else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            stream.partial = buffer
            return
        complete, stream.partial = buffer[:end], buffer[end + 2 :]
        if stream.state == "opening":
            if CONNECTED in complete:
                stream.state = "ready"  # the opening snapshot and summary are not what is measured
                self.ready += 1
            return
        for match in RUN_EVENT.finditer(complete):
            run_id = int(match.group(1))
            entry = self.seen.get(run_id)
            if entry is None:
                entry = self.seen[run_id] = [0, now]
            entry[0] += 1
            if entry[0] == self.count:
                emit({"run": run_id, "first": entry[1], "all": now})

    def serve(self, stdin: int) -> None:
        """Open the streams (a few dozen at a time, so the daemon's accept queue never overflows),
        report when all are ready, then read until stdin closes."""
        started = time.monotonic()
        self.poll.register(stdin, select.EPOLLIN)
        opened = 0
        while not self.failed:
            while opened < self.count and opened - self.ready < OPENING_AT_ONCE:
                self.open_one()
                opened += 1
            events = self.poll.poll(1.0)
            now = time.monotonic()
            for fd, _ in events:
                if fd == stdin:
                    return
                stream = self.streams[fd]
                try:
                    data = stream.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.fail(f"a stream failed: {exc}")
                    break
                was_ready = stream.state == "ready"
                self.received(stream, data, now)
                if not was_ready and stream.state == "ready" and self.ready == self.count:
                    emit({"ready": self.count, "open_s": round(now - started, 3)})
        # Failed: wait for the parent to close stdin, reading nothing more.
        select.select([stdin], [], [])

    def close(self) -> None:
        for stream in self.streams.values():
            stream.sock.close()
        self.poll.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    raise_open_files_limit(args.count + 256)
    where = urlsplit(args.url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()
    holder = Holder((host, port), request, args.count)
    try:
        holder.serve(sys.stdin.fileno())
    except OSError as exc:
        holder.fail(f"cannot open a stream: {exc}")
        select.select([sys.stdin.fileno()], [], [])
    finally:
        holder.close()


class HolderGroup:
    """`count` streams held by as many holder processes as it takes (PER_PROCESS each)."""

    def __init__(self, url: str, path: str, count: int) -> None:
        self.url = url
        self.path = path
        processes = max(1, math.ceil(count / PER_PROCESS))
        self.counts = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.open_s = 0.0
        self._runs: list[dict[int, tuple[float, float]]] = [{} for _ in self.counts]
        self._ready = [asyncio.Event() for _ in self.counts]
        self._news = asyncio.Event()
        self._errors: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> HolderGroup:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, timeout: float = 180.0) -> None:
        for index, count in enumerate(self.counts):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.holder",
                "--url",
                self.url,
                "--path",
                self.path,
                "--count",
                str(count),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(index, proc)))
        async with asyncio.timeout(timeout):
            for ready in self._ready:
                while not ready.is_set():
                    await self._next()

    async def _read(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            message: dict[str, Any] = json.loads(line)
            if "ready" in message:
                self.open_s = max(self.open_s, message["open_s"])
                self._ready[index].set()
            elif "run" in message:
                self._runs[index][message["run"]] = (message["first"], message["all"])
            elif "error" in message:
                self._errors.append(message["error"])
            self._news.set()
        if proc.returncode is None:
            await proc.wait()
        self._errors.append(f"holder {index} exited")
        self._news.set()

    async def _next(self) -> None:
        if self._errors:
            raise RuntimeError(f"stream holder: {self._errors[0]}")
        self._news.clear()
        await self._news.wait()

    async def reached(self, run_id: int, timeout: float = 60.0) -> tuple[float, float]:
        """When run_id's status_update reached the first and the last of all the streams."""
        async with asyncio.timeout(timeout):
            while not all(run_id in runs for runs in self._runs):
                await self._next()
        times = [runs.pop(run_id) for runs in self._runs]
        return min(first for first, _ in times), max(last for _, last in times)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


if __name__ == "__main__":
    main()
