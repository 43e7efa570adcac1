"""Delivering one event to one notifier: a webhook request, a mail through an SMTP server
(aiosmtplib), or a command reading the event as JSON on its stdin. Each raises DeliveryError."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

import aiohttp
import aiosmtplib

from jobd.config.notifiers import NotifierConfig
from jobd.notify.render import email_message, webhook_body

MAX_ERROR = 500


class DeliveryError(Exception):
    """A delivery failed; `retry` says whether trying again may help (not after a 4xx)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message[:MAX_ERROR])
        self.retry = retry


async def send(config: NotifierConfig, event: dict[str, Any], session: aiohttp.ClientSession) -> None:
    try:
        if config.kind == "webhook":
            await send_webhook(config, event, session)
        elif config.kind == "email":
            await send_email(config, event)
        else:
            await send_command(config, event)
    except DeliveryError:
        raise
    except (TimeoutError, OSError, aiohttp.ClientError, aiosmtplib.SMTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None


async def send_webhook(config: NotifierConfig, event: dict[str, Any], session: aiohttp.ClientSession) -> None:
    data, content_type = webhook_body(config, event)
    headers = {"Content-Type": content_type, "User-Agent": "jobd", **config.headers}
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with session.request(config.method, config.url, data=data, headers=headers, timeout=timeout) as response:
        if response.status < 300:
            return
        text = (await response.text(errors="replace"))[:200].strip()
        error = f"HTTP {response.status}" + (f": {text}" if text else "")
        # A 4xx will not get better by asking again (except a timeout or being asked to slow down).
        raise DeliveryError(error, retry=response.status >= 500 or response.status in (408, 429))


async def send_email(config: NotifierConfig, event: dict[str, Any]) -> None:
    await aiosmtplib.send(
        email_message(config, event),
        hostname=config.host,
        port=config.port,
        username=config.user,
        password=config.password,
        use_tls=config.tls,
        start_tls=config.starttls,
        timeout=config.timeout_s,
    )


async def send_command(config: NotifierConfig, event: dict[str, Any]) -> None:
    process = await asyncio.create_subprocess_exec(
        *config.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: a timeout stops what it started too
    )
    try:
        async with asyncio.timeout(config.timeout_s):
            _, stderr = await process.communicate(json.dumps(event).encode() + b"\n")
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise DeliveryError(f"timed out after {config.timeout_s:g} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # Reaped even when cancelled (a stop): SIGKILL ends it at once, and its pipes close with it.
        await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise DeliveryError(f"exit code {process.returncode}" + (f": {tail[0]}" if tail[0] else ""))
