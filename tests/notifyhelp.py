"""What the notification tests receive with: a webhook endpoint with a failing phase, and an SMTP
server (aiosmtpd) on the test's own event loop."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session


class Hook:
    """A webhook endpoint: records each request; answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.statuses: list[int] = []
        self.failing = 0  # answer this status to everything while set
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.failing or (self.statuses.pop(0) if self.statuses else 200)
        self.requests.append((dict(request.headers), body, status))
        return web.Response(status=status, text="down" if status >= 500 else "ok")

    @property
    def delivered(self) -> list[bytes]:
        return [body for _, body, status in self.requests if status < 300]


@pytest.fixture
async def hook(aiohttp_server: Any) -> Hook:
    h = Hook()
    app = web.Application()
    app.router.add_route("*", "/hook", h.handle)
    server = await aiohttp_server(app)
    h.url = str(server.make_url("/hook"))
    return h


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, email.message.EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 Message accepted"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box, hostname="localhost", loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield box, port
    server.close()
    await server.wait_closed()
