"""Notifications of a real `jobd serve`: a notification pending when the daemon is killed with
SIGKILL is delivered by the next start, and `jobd notify-test` sends a sample through it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BACKENDS, wait_for
from notifyhelp import Hook, hook  # noqa: F401 (the fixture)
from test_lifecycle import ENV, Api, daemons, write_config  # noqa: F401 (daemons is a fixture)

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


async def notification(api: Api, query: str) -> dict[str, Any] | None:
    found = (await api.get(f"/api/v1/notifications{query}"))["notifications"]
    return found[0] if found else None


async def test_a_pending_notification_survives_sigkill(
    tmp_path: Path, daemons: Any, store_toml: str, hook: Hook
) -> None:
    # A first wait of 2 s after each failed attempt: the kill lands between two attempts.
    notifiers = (
        f'[notifiers.chat]\nkind = "webhook"\nurl = "{hook.url}"\nbody = {{ text = "$text" }}\n'
        "retry_backoff_s = 2\nmax_attempts = 20\ntimeout_s = 2\n"
    )
    config = write_config(
        tmp_path / "jobd.toml",
        store=store_toml,
        workers="concurrency = 2\nshutdown_grace_s = 2\nkill_grace_s = 0.5",
        extra=notifiers,
        jobs='[jobs.fail]\nhandler = "sample_jobs:fails"\nnotify = { on_failure = ["chat"] }\n',
    )
    hook.failing = 500
    first = daemons(config)
    url = await first.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        run = await api.trigger("fail")
        await api.finished(run["id"])
        before = await wait_for(lambda: _attempted(api), timeout=20, interval=0.05)
        await first.kill()
        assert before["run_id"] == run["id"] and before["last_error"].startswith("HTTP 500")
        hook.failing = 0
        second = daemons(config)
        api.url = await second.start()
        delivered = await wait_for(lambda: notification(api, "?job=fail&status=delivered"), timeout=30)
        assert delivered["id"] == before["id"] and delivered["attempts"] == before["attempts"] + 1
        assert delivered["last_error"].startswith("HTTP 500")
        [body] = hook.delivered
        assert json.loads(body) == {"text": f"jobd: job 'fail' failed (run {run['id']}: ValueError: boom)"}

        command = [sys.executable, "-m", "jobd", "notify-test", "chat", "--url", api.url]
        process = await asyncio.create_subprocess_exec(
            *command, env={**ENV, "PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        assert process.returncode == 0 and out.decode().strip() == "chat: delivered"
        assert json.loads(hook.delivered[-1])["text"] == "jobd: a test notification to 'chat'"
        hook.failing = 503
        process = await asyncio.create_subprocess_exec(
            *command, env={**ENV, "PATH": "/usr/bin:/bin"}, stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        assert process.returncode == 1 and "notifier 'chat': HTTP 503" in err.decode()
        await second.stop()


async def _attempted(api: Api) -> dict[str, Any] | None:
    found = await notification(api, "?job=fail&status=pending")
    return found if found is not None and found["attempts"] >= 1 else None
