"""Processes a dead daemon left running, found and stopped before their runs are retried.

A command runs in a process group of its own, so when jobd is killed (kill -9, the OOM killer)
its commands live on, re-parented to init. The run is recorded as interrupted at the next start
and retried: without this, the retry would run beside the old copy. Under systemd the unit's
cgroup is killed with the daemon; elsewhere nothing else would stop them.

Every command carries `JOBD_STORE=<the store's real path>` in its environment, and its children
inherit it. At start, holding the store's lock, jobd is the only daemon of that store, and it has
started nothing yet: any process that carries its store's path is a leftover. Linux only (/proc);
elsewhere this finds nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

STORE_VARIABLE = "JOBD_STORE"
_POLL_S = 0.02


def store_marker(store_path: Path) -> str:
    """The value of JOBD_STORE for commands of the daemon on this store."""
    return os.path.realpath(store_path)


def find_leftovers(store_path: Path, *, proc: Path = Path("/proc")) -> list[int]:
    """Pids of live processes whose environment names this store (other than this process and
    its ancestors, in case jobd was itself started by a job)."""
    wanted = f"{STORE_VARIABLE}={store_marker(store_path)}".encode()
    exclude = set(_ancestors(os.getpid(), proc))
    found = []
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if wanted in environ.split(b"\0") and _alive(int(entry.name), proc):
            found.append(int(entry.name))
    return sorted(found)


async def stop_leftovers(pids: Iterable[int], grace_s: float, *, proc: Path = Path("/proc")) -> list[int]:
    """SIGTERM each, SIGKILL what is left after `grace_s`; returns the pids that needed SIGKILL."""
    pending = set(pids)
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        # Not our children, so there is nothing to wait on: init reaps them.
        await asyncio.sleep(_POLL_S)
        pending = {pid for pid in pending if _alive(pid, proc)}
    for pid in pending:
        _signal(pid, signal.SIGKILL)
    return sorted(pending)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int, proc: Path) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent's pid)."""
    try:
        return Path(proc, str(pid), "stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int, proc: Path) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    fields = _stat(pid, proc)
    return fields is not None and fields[0] != b"Z"


def _ancestors(pid: int, proc: Path) -> Iterable[int]:
    while pid > 1:
        yield pid
        fields = _stat(pid, proc)
        if fields is None:
            return
        pid = int(fields[1])
