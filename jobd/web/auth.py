"""Bearer tokens with scopes, checked in constant time.

Scopes nest: read ⊂ trigger ⊂ admin. A route declares the scope it needs with `@requires`;
routes that declare none are public (health checks, the dashboard's static files).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from jobd.config import AuthConfig, Token
from jobd.errors import Forbidden, Unauthorized
from jobd.web.keys import TOKEN
from jobd.web.scope import JOB_SCOPE, JobScope

SCOPE_RANK = {"read": 1, "trigger": 2, "admin": 3}
Handler = TypeVar("Handler", bound=Callable[..., Any])


def requires(scope: str) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.jobd_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def required_scope(request: web.Request) -> str | None:
    handler = getattr(request.match_info, "handler", None)
    return getattr(handler, "jobd_scope", None)


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = request.headers.get("X-API-Key", "").strip()
    return api_key or None


def _digest(secret: str) -> bytes:
    # surrogateescape: header bytes that are not UTF-8 come from aiohttp as surrogates, and are a wrong token
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def secret_matches(presented: str, secret: str) -> bool:
    """A constant-time comparison of digests, so that not even the secret's length shows."""
    return hmac.compare_digest(_digest(presented), _digest(secret))


def find_token(config: AuthConfig, presented: str) -> Token | None:
    """Compare against every token so the time taken does not tell which one nearly matched.
    Digests are compared, not the texts, so that it does not tell a token's length either."""
    found = None
    for token in config.tokens:
        if secret_matches(presented, token.token):
            found = token
    return found


def check_scope(token_scope: str, needed: str) -> None:
    if SCOPE_RANK[token_scope] < SCOPE_RANK[needed]:
        raise Forbidden(f"this token's scope is {token_scope!r}; {needed!r} is needed", needed_scope=needed)


class Authenticator:
    """Decides who a request is. Streams may also present a short-lived ticket (see tickets)."""

    def __init__(self, config: AuthConfig, ticket_check: Callable[[web.Request], str | None] | None = None) -> None:
        self.config = config
        self.ticket_check = ticket_check

    def scope_of(self, request: web.Request) -> str:
        """The caller's scope; raises Unauthorized when auth is on and no valid credential is given."""
        if not self.config.enabled:
            return "admin"
        presented = presented_token(request)
        if presented is not None:
            token = find_token(self.config, presented)
            if token is None:
                raise Unauthorized("invalid token")
            request[TOKEN] = token
            if token.jobs:
                request[JOB_SCOPE] = JobScope(token.jobs)
            return token.scope
        if self.ticket_check is not None:
            scope = self.ticket_check(request)
            if scope is not None:
                return scope
        raise Unauthorized("a token is required: send 'Authorization: Bearer TOKEN' or 'X-API-Key: TOKEN'")

    def check(self, request: web.Request) -> None:
        """Refuse a request to a route that needs a scope the caller lacks (run by jobd's middleware)."""
        needed = required_scope(request)
        if needed is not None and request.method != "OPTIONS":
            check_scope(self.scope_of(request), needed)
