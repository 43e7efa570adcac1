"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from jobd.config import Token

if TYPE_CHECKING:
    from jobd.app import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
TOKEN: web.RequestKey[Token] = web.RequestKey("token", Token)
