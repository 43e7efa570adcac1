"""Short-lived stream tickets, so long-lived tokens never go into URLs.

A browser's EventSource cannot send an Authorization header. It asks `POST /api/v1/tickets` (with
its token, from JavaScript) for a ticket bound to one stream path and to the token's scope, and
opens `...?ticket=T`. A ticket is HMAC-signed with a key that lives only in this process: nothing
is stored per ticket, and a restart invalidates them all (clients mint a new one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable

from aiohttp import web

from jobd.errors import Unauthorized
from jobd.models import now_ms
from jobd.web.scope import JOB_SCOPE, JobScope

# The streams a ticket can be minted for, and the scope each needs. A run's path is a stream only
# with `Accept: text/event-stream`, which EventSource sends: a ticket for it opens nothing else.
RUN_VIEW = re.compile(r"^/api/v1/runs/[0-9]{1,18}$")
STREAM_PATHS = (
    (re.compile(r"^/api/v1/runs/[0-9]{1,18}/events$"), "read"),
    (RUN_VIEW, "read"),
    (re.compile(r"^/api/v1/events$"), "admin"),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def stream_scope(path: str) -> str | None:
    """The scope a stream path needs; None when the path is not a stream."""
    for pattern, scope in STREAM_PATHS:
        if pattern.match(path):
            return scope
    return None


class Tickets:
    def __init__(self, ttl_s: float, *, secret: bytes | None = None, clock: Callable[[], int] = now_ms) -> None:
        self.ttl_ms = round(ttl_s * 1000)
        self.clock = clock
        self._key = secret or secrets.token_bytes(32)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def use_key(self, key: bytes) -> None:
        """Sign with `key` from now on: a cluster's nodes share one, so a ticket holds on any node."""
        self._key = key

    def mint(self, path: str, scope: str, *, ttl_s: float | None = None, jobs: tuple[str, ...] = ()) -> tuple[str, int]:
        """A ticket for `path` carrying `scope` (and the job patterns of a token limited to some
        jobs); returns it and its expiry (epoch ms)."""
        expires = self.clock() + (self.ttl_ms if ttl_s is None else round(ttl_s * 1000))
        claims: dict[str, object] = {"p": path, "s": scope, "x": expires}
        if jobs:
            claims["j"] = list(jobs)
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}", expires

    def verify(self, ticket: str, path: str) -> str:
        """The scope the ticket grants on `path`; raises Unauthorized otherwise."""
        return self.claims(ticket, path)[0]

    def claims(self, ticket: str, path: str) -> tuple[str, tuple[str, ...]]:
        """The scope and the job patterns (none: every job) the ticket grants on `path`."""
        body, _, signature = ticket.partition(".")
        try:
            payload = _unb64(body)
            valid = hmac.compare_digest(_unb64(signature), self._sign(payload))
            claims = json.loads(payload) if valid else None
        except (ValueError, binascii.Error):
            claims = None
        if not isinstance(claims, dict):
            raise Unauthorized("invalid ticket")
        if claims.get("p") != path:
            raise Unauthorized("this ticket is for another stream")
        if not isinstance(claims.get("x"), int) or claims["x"] <= self.clock():
            raise Unauthorized("the ticket has expired; mint a new one with POST /api/v1/tickets")
        scope = claims.get("s")
        if not isinstance(scope, str) or scope not in ("read", "trigger", "admin"):
            raise Unauthorized("invalid ticket")
        jobs = claims.get("j", [])
        if not isinstance(jobs, list) or not all(isinstance(job, str) for job in jobs):
            raise Unauthorized("invalid ticket")
        return scope, tuple(jobs)

    def check(self, request: web.Request) -> str | None:
        """The Authenticator's hook: a `?ticket=` on a GET of the stream it was minted for."""
        ticket = request.query.get("ticket")
        if ticket is None:
            return None
        if request.method != "GET" or (
            RUN_VIEW.match(request.path) and "text/event-stream" not in request.headers.get("Accept", "")
        ):
            raise Unauthorized("tickets are only accepted on stream GETs")
        scope, jobs = self.claims(ticket, request.path)
        if jobs:
            request[JOB_SCOPE] = JobScope(jobs)
        return scope


TICKETS: web.AppKey[Tickets] = web.AppKey("tickets", Tickets)

__all__ = ["RUN_VIEW", "STREAM_PATHS", "TICKETS", "Tickets", "stream_scope"]
