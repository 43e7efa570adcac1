"""What the figures were measured on: the header of the table and of results.json."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

import jobd

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def describe() -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "jobd": jobd.__version__,
        "commit": commit + ("+dirty" if dirty else ""),
        "load_average": list(os.getloadavg()),
        "executable": sys.executable,
    }


def header(machine: dict[str, Any], *, mode: str, settings: str) -> str:
    load = " ".join(f"{value:.2f}" for value in machine["load_average"])
    return (
        f"jobd benchmark, {mode} mode, {machine['when']}; daemons: {settings}\n"
        f"machine: {machine['cores']} cores ({machine['cpu']}), {machine['system']}, "
        f"Python {machine['python']}, SQLite {machine['sqlite']}, aiohttp {machine['aiohttp']}\n"
        f"jobd {machine['jobd']} at {machine['commit']}; store on {machine.get('store_filesystem', '?')}; "
        f"load average at start {load} "
        "(other work on the machine skews every figure)"
    )


def filesystem(path: Path) -> str:
    """The type and device of the filesystem holding `path` (a tmpfs would flatter every commit)."""
    best = ("", "unknown", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best[0]):
                best = (mount, kind, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})" if best[0] else "unknown"
