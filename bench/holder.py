"""Holds many idle SSE streams open in a process of its own and reports when events reach them.

    python -m bench.holder --url http://127.0.0.1:PORT --path '/api/v1/events?...' --count 5000

Each stream is a bare asyncio Protocol on a raw socket (a few KB each, where an aiohttp client
response costs tens), so one process can hold thousands. It speaks JSON lines on stdout:

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
import re
import math
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

RUN_EVENT = re.compile(rb'"type":"status_update","run_id":(\d+)')
CONNECTED = b'"type":"connected"'
OPENING_AT_ONCE = 64
PER_PROCESS = 5000


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards `wanted` (at most the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Holder:
    def __init__(self, count: int) -> None:
        self.count = count
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.failed = asyncio.Event()
        self.seen: dict[int, list[float]] = {}  # run id → [streams reached, first arrival]
        self.streams: list[Stream] = []

    def stream_ready(self) -> None:
        self.ready += 1
        if self.ready == self.count:
            self.all_ready.set()

    def arrived(self, run_id: int, now: float) -> None:
        entry = self.seen.get(run_id)
        if entry is None:
            entry = self.seen[run_id] = [0, now]
        entry[0] += 1
        if entry[0] == self.count:
            emit({"run": run_id, "first": entry[1], "all": now})

    def fail(self, reason: str) -> None:
        if not self.failed.is_set():
            emit({"error": reason})
            self.failed.set()


class Stream(asyncio.Protocol):
    __slots__ = ("holder", "request", "transport", "partial", "state")

    def __init__(self, holder: Holder, request: bytes) -> None:
        self.holder = holder
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.partial = b""
        self.state = "head"  # head → opening → ready

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.state == "head":
            if not data.startswith(b"HTTP/1.1 200"):
                status_line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                self.holder.fail(f"stream refused: {status_line}")
                return
            self.state = "opening"
        buffer = self.partial + data if self.partial else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.partial = buffer
            return
        complete, self.partial = buffer[:end], buffer[end + 2:]
        if self.state == "opening":
            if CONNECTED not in complete:
                return
            self.state = "ready"
            self.holder.stream_ready()
            return  # the opening snapshot and summary are not what is measured
        for match in RUN_EVENT.finditer(complete):
            self.holder.arrived(int(match.group(1)), now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.holder.fail(f"a stream closed: {exc or 'by the daemon'}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit(args.count + 256)
    where = urlsplit(args.url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
               "Cache-Control: no-cache\r\n\r\n").encode()
    holder = Holder(args.count)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def open_one() -> None:
        async with gate:
            stream = Stream(holder, request)
            await loop.create_connection(lambda: stream, host, port)
            holder.streams.append(stream)

    started = time.monotonic()
    opening = asyncio.gather(*(open_one() for _ in range(args.count)))
    try:
        await opening
    except OSError as exc:
        holder.fail(f"cannot open a stream: {exc}")
    ready = asyncio.ensure_future(holder.all_ready.wait())
    failed = asyncio.ensure_future(holder.failed.wait())
    await asyncio.wait({ready, failed}, return_when=asyncio.FIRST_COMPLETED)
    if holder.all_ready.is_set() and not holder.failed.is_set():
        emit({"ready": holder.ready, "open_s": round(time.monotonic() - started, 3)})
    # Until the parent closes our stdin (or it goes away).
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()
    holder.failed.set()  # closing streams now is no failure: stay quiet
    for stream in holder.streams:
        if stream.transport is not None:
            stream.transport.close()
    ready.cancel()
    failed.cancel()


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
                sys.executable, "-m", "bench.holder", "--url", self.url, "--path", self.path, "--count", str(count),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
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
    asyncio.run(main())
