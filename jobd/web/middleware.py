"""Request middleware: request ids, authentication, the access log, and problem+json for every error.

All errors leave through `responses.problem()`: domain errors map to their status, aiohttp's own HTTP
errors (unknown route, wrong method, body too large) keep theirs, and anything unexpected is a
generic 500 whose traceback goes to the log only.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from jobd.errors import JobdError
from jobd.web.keys import REQUEST_ID
from jobd.web.responses import problem

# A caller's id is kept if it is printable ASCII without spaces (UUIDs, base64, "trace/span"): safe to
# echo in a header and to log; anything else gets an id of our own.
_REQUEST_ID = re.compile(r"^[!-~]{1,200}$")
# Query parameters where clients put credentials (jobd reads only ticket; the rest are mistakes to hide).
_SECRET_QUERY = re.compile(r"((?:^|[?&])(?:ticket|token|access_token|api_key|apikey|key)=)[^&]*", re.IGNORECASE)


def redact(path_qs: str) -> str:
    """Hide tickets and tokens that clients put in query strings."""
    return _SECRET_QUERY.sub(r"\1[redacted]", path_qs)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def make_middleware(
    log: Any = None,
    *,
    check: Callable[[web.Request], None] | None = None,
    guard: Callable[[web.Request], Awaitable[None]] | None = None,
    answered: Callable[[web.Request, web.StreamResponse], Awaitable[None]] | None = None,
) -> Any:
    """The one middleware of jobd's own: request ids, `check` (authentication) and `guard` (a
    token's job scope) before the handler, problem+json for errors, `answered` (the audit log)
    and the access log. One frame per request rather than one per concern."""
    access_log = log or structlog.get_logger("jobd.access")
    # Request ids: a random per-process prefix and a counter; cheaper than uuid4 per request.
    prefix = uuid.uuid4().hex[:20]
    counter = itertools.count(1)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else f"{prefix}{next(counter):012x}"
        request[REQUEST_ID] = request_id
        try:
            if check is not None:
                check(request)
            if guard is not None:
                await guard(request)
            response = await handler(request)
        except JobdError as exc:
            response = problem(exc.status, exc.title, exc.detail, slug=exc.slug, headers=exc.headers(), extra=exc.extra)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            response = problem(exc.status, exc.reason, detail, slug=_slug(exc.reason), headers=headers)
        except Exception:
            access_log.exception(
                "request_failed", request_id=request_id, method=request.method, path=redact(request.path_qs)
            )
            response = problem(
                500,
                "Internal error",
                "an unexpected error occurred; see the jobd log",
                slug="internal-error",
                extra={"request_id": request_id},
            )
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        if answered is not None:
            await answered(request, response)
        if not access_log.is_enabled_for(logging.INFO):
            return response
        access_log.info(
            "request",
            request_id=request_id,
            method=request.method,
            path=redact(request.path_qs),
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            remote=request.remote,
        )
        return response

    return middleware
