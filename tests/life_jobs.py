"""Python handlers for the lifecycle tests, run by a real `jobd serve` process (referenced as
"life_jobs:name"; the tests put this folder on the daemon's PYTHONPATH)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SYSTEMD_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")


def systemd_keys(environ: Any) -> list[str]:
    return sorted(key for key in environ if key.startswith(SYSTEMD_KEYS))


async def gated(ctx: Any, params: dict[str, Any]) -> str:
    """Runs until the file params["gate"] exists."""
    ctx.progress(1, "waiting for the gate")
    gate = Path(params["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    return "through"


async def forever(ctx: Any, params: dict[str, Any]) -> None:
    ctx.progress(1, "waiting")
    await asyncio.Event().wait()


async def deaf(ctx: Any, params: dict[str, Any]) -> None:
    """Ignores its cancellation: a bug jobd must survive (it abandons the handler and exits anyway)."""
    ctx.progress(1, "not listening")
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


def blocking(ctx: Any, params: dict[str, Any]) -> None:
    """A plain function that never looks at ctx.cancelled: it cannot be stopped, only abandoned."""
    ctx.progress(1, "blocking")
    time.sleep(60)


async def brief(ctx: Any, params: dict[str, Any]) -> str:
    await asyncio.sleep(float(params.get("seconds", 0.2)))
    return "done"


def systemd_env(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What a handler, and a process it starts, can see of jobd's systemd variables."""
    code = f"import json, os; print(json.dumps(sorted(k for k in os.environ if k.startswith({SYSTEMD_KEYS!r}))))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    return {"own": systemd_keys(os.environ), "child": json.loads(child.stdout), "has_path": "PATH" in os.environ}
