"""A real `jobd serve` process for tests: started, read, signalled and always cleaned up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections import deque
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback port free right now: for a daemon that must come back on the same address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a daemon's job commands, each leading its own group)."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            children.append(int(entry.name))
    return children


class DaemonProcess:
    def __init__(
        self, config_path: Path, *, env: dict[str, str] | None = None, listen: socket.socket | None = None
    ) -> None:
        """`listen`: a listening socket handed over as systemd's socket activation does (fd 3)."""
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.listen = listen
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: deque[dict[str, Any]] = deque(maxlen=5000)
        self.url = ""
        self._reader: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[str] | None = None

    async def start(self, timeout: float = 20.0) -> str:
        self._listening = asyncio.get_running_loop().create_future()
        argv = [sys.executable, "-m", "jobd", "serve", "-c", str(self.config_path), "--log-format", "json"]
        pass_fds: tuple[int, ...] = ()
        if self.listen is not None:
            # As systemd does it: the socket becomes fd 3, LISTEN_PID names the process that execs jobd.
            fd = self.listen.fileno()
            handover = (
                f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
                "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
            )
            argv = [sys.executable, "-c", handover, *argv[1:]]
            pass_fds = (fd,)
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            pass_fds=pass_fds,
        )
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(timeout):
            self.url = await self._listening
        return self.url

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "raw", "text": line.decode(errors="replace").rstrip()}
            self.lines.append(record)
            if record.get("event") == "jobd_listening" and self._listening and not self._listening.done():
                host, port = record["addresses"][0]
                self._listening.set_result(f"http://{host}:{port}")
        if self._listening and not self._listening.done():
            self._listening.set_exception(RuntimeError(f"jobd exited before listening: {list(self.lines)[-5:]}"))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        """SIGKILL, as a crash would; reaps the process."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            # Jobs run in process groups of their own, which outlive a killed daemon: end them too,
            # so that a test that failed half way leaves nothing running.
            groups = child_pids(self.proc.pid)
            self.proc.kill()
            await self.proc.wait()
            for pgid in groups:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
