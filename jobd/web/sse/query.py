"""What a stream request asks for, read from its headers and query string."""

from __future__ import annotations

from aiohttp import web

from jobd.errors import BadRequest
from jobd.models import RunStatus
from jobd.web.params import list_param

NOTHING: frozenset[str] = frozenset()  # one empty filter for every stream that has none
STATUSES = frozenset(status.value for status in RunStatus)


def wants_stream(request: web.Request) -> bool:
    """`GET /runs/{id}` asked for an event stream rather than JSON."""
    return request.method == "GET" and "text/event-stream" in request.headers.get("Accept", "")


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def last_event_id(request: web.Request) -> int | None:
    """Last-Event-ID (or `?last_event_id=` for clients that cannot set headers); junk is ignored."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    raw = raw.strip()
    # Up to 40 digits: a cluster's ids are feed positions (jobd.store.postgres.events.KEY_BASE).
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 40 else None  # "²" is a digit to isdigit()


def names(request: web.Request, name: str) -> frozenset[str]:
    values = list_param(request, name)
    return frozenset(values) if values else NOTHING


def statuses(request: web.Request) -> frozenset[str]:
    values = [value.upper() for value in list_param(request, "status")]
    for value in values:
        if value not in STATUSES:
            raise BadRequest(f"status must be one or more of {', '.join(sorted(STATUSES))}")
    return frozenset(values) if values else NOTHING
