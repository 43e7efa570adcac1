"""Cross-origin access for browser clients on the origins in `[server] cors_origins`.

Headers are added in `on_response_prepare`, so streams (whose headers go out before the handler
returns) and error responses get them too. Preflight requests are answered before auth, which
never applies to OPTIONS. With no origins configured nothing is added at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-API-Key, X-Request-ID"
EXPOSE_HEADERS = "Location, Retry-After, X-Request-ID"
MAX_AGE_S = "600"


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)
        self.any_origin = "*" in self.origins

    def allowed(self, origin: str | None) -> str | None:
        """The value for Access-Control-Allow-Origin, or None when `origin` is not allowed."""
        if not origin:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    def middleware(self) -> Any:
        @web.middleware
        async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
            if (
                request.method == "OPTIONS"
                and "Access-Control-Request-Method" in request.headers
                and self.allowed(request.headers.get("Origin"))
            ):
                return web.Response(
                    status=204,
                    headers={
                        "Access-Control-Allow-Methods": ALLOW_METHODS,
                        "Access-Control-Allow-Headers": ALLOW_HEADERS,
                        "Access-Control-Max-Age": MAX_AGE_S,
                    },
                )
            return await handler(request)

        return preflight

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        vary = response.headers.get("Vary")
        if not vary or "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = self.allowed(request.headers.get("Origin"))
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def setup(app: web.Application, origins: Iterable[str]) -> None:
    """Answer cross-origin requests from `origins` ("*" for any); nothing when it is empty."""
    cors = Cors(origins)
    if not cors.origins:
        return
    app.middlewares.append(cors.middleware())
    app.on_response_prepare.append(cors.on_prepare)


__all__ = ["Cors", "setup"]
