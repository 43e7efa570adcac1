"""The daemon under test: a real `jobd serve` process on a config written for the scenario.

Release settings: JSON logs to a file (stderr redirected), `--log-level warning` (at info every
request and every run writes a line; docs/performance.md says what that costs), SQLite on
disk in the scenario's temporary folder, the default `store.synchronous = "normal"`.

Readiness is what systemd would see: the daemon's READY=1 on a NOTIFY_SOCKET that we bind, so
start-up is timed from spawning the process to that datagram. CPU time and RSS come from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import profile as profiling

REPO = Path(__file__).resolve().parent.parent
NOOP_HANDLER = "jobd.examples:noop"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_config(sections: Mapping[str, Mapping[str, Any]], jobs: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    for name, values in jobs.items():
        lines.append(f"[jobs.{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def noop_job(**extra: Any) -> dict[str, Any]:
    """A job whose runs return at once and may all run side by side."""
    return {"handler": NOOP_HANDLER, "overlap": "allow", "max_concurrency": 1000, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JobdProcess:
    """One `jobd serve` process. Use as `async with JobdProcess(...) as jobd:`."""

    def __init__(
        self,
        workdir: Path,
        jobs: Mapping[str, Mapping[str, Any]],
        *,
        concurrency: int = 16,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        log_level: str = "warning",
        profile: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.profile = profile
        self.profiler: asyncio.subprocess.Process | None = None
        self.config_path = workdir / "jobd.toml"
        self.log_path = workdir / "jobd.log"
        merged: dict[str, dict[str, Any]] = {
            # A port picked here rather than port 0: at log level warning the daemon does not log it.
            "server": {"host": "127.0.0.1", "port": free_port()},
            "store": {"path": "state/jobd.db"},
            "workers": {"concurrency": concurrency, "shutdown_grace_s": 5.0, "kill_grace_s": 1.0},
        }
        for name, values in (sections or {}).items():
            merged[name] = {**merged.get(name, {}), **values}
        if "url" in merged["store"]:  # a cluster node: PostgreSQL instead of the SQLite file
            del merged["store"]["path"]
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(toml_config(merged, jobs))
        self.proc: asyncio.subprocess.Process | None = None
        self._notify: socket.socket | None = None
        self.url = f"http://127.0.0.1:{merged['server']['port']}"
        self.startup_s = 0.0

    @property
    def store_path(self) -> Path:
        return self.workdir / "state" / "jobd.db"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> JobdProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 60.0) -> float:
        """Spawn the daemon and wait for READY=1; returns the seconds that took."""
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        # Kept open while the daemon runs: it also says STOPPING, and warns when nobody listens.
        self._notify = notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.setblocking(False)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTHONDEV", "PYTHONASYNCIODEBUG", "PYTHONTRACEMALLOC"))
        }
        env.update(NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(REPO))
        loop = asyncio.get_running_loop()
        try:
            with open(self.log_path, "ab") as log:
                started = time.perf_counter()
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "jobd",
                    "serve",
                    "-c",
                    str(self.config_path),
                    "--log-format",
                    "json",
                    "--log-level",
                    self.log_level,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                    env=env,
                )
            exited = asyncio.ensure_future(self.proc.wait())
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        received = asyncio.ensure_future(loop.sock_recv(notify, 4096))
                        await asyncio.wait({received, exited}, return_when=asyncio.FIRST_COMPLETED)
                        if not received.done():
                            received.cancel()
                            raise RuntimeError(
                                f"jobd exited with {self.proc.returncode} before it was ready; "
                                f"see {self.log_path}:\n{self.log_tail()}"
                            )
                        if b"READY=1" in received.result().split(b"\n"):
                            break
            finally:
                exited.cancel()
            self.startup_s = time.perf_counter() - started
            # Read what the daemon says after READY (STATUS lines): unread, they fill the
            # socket's buffer and the daemon warns that nobody listens.
            loop.add_reader(notify.fileno(), self._drain_notify)
        except BaseException:
            notify.close()
            raise
        if self.profile is not None:
            self.profiler = await profiling.start(self.pid, self.profile)
        return self.startup_s

    def _drain_notify(self) -> None:
        assert self._notify is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                self._notify.recv(4096)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def warnings(self) -> list[dict[str, Any]]:
        """Log records at warning level or worse (a healthy run has none)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                found.append({"event": "raw", "text": line})
                continue
            if record.get("level") in ("warning", "error", "critical"):
                found.append(record)
        return found

    def cpu_s(self) -> float:
        """User + system CPU seconds the daemon has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE_SIZE

    async def stop(self, timeout: float = 30.0) -> None:
        try:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(timeout):
                        await self.proc.wait()
                except TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        finally:
            if self._notify is not None:
                asyncio.get_running_loop().remove_reader(self._notify.fileno())
                self._notify.close()
                self._notify = None
        if self.profiler is not None:
            await self.profiler.wait()  # it writes its output once the daemon is gone
            self.profiler = None
            assert self.profile is not None
            print(profiling.summarize(self.profile), file=sys.stderr)
