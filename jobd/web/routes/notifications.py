"""Notifications: the record (`/api/v1/notifications`), a notifier's test, and a job's snooze."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from jobd.errors import BadRequest, JobdError
from jobd.models import iso_ms, parse_iso_ms
from jobd.notify.senders import DeliveryError
from jobd.store.notifications import STATUSES
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, int_param, list_param, read_json_object
from jobd.web.responses import json_response
from jobd.web.routes.runs import MAX_PAGE, cursor_param, encode_cursor
from jobd.web.scope import job_names

if TYPE_CHECKING:
    from jobd.app import Daemon

routes = web.RouteTableDef()


class DeliveryFailed(JobdError):
    status, title, slug = 502, "Notification not delivered", "notification-failed"


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


@routes.get(PREFIX + "/notifications")
@requires("read")
async def list_notifications(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    statuses = tuple(value.lower() for value in list_param(request, "status"))
    for status in statuses:
        if status not in STATUSES:
            raise BadRequest(f"status must be one or more of {', '.join(STATUSES)}")
    limit = int_param(request, "limit", 50, 1, MAX_PAGE)
    page = await daemon.notifications.page(
        job=request.query.get("job") or None,
        statuses=statuses,
        before_id=cursor_param(request),
        limit=limit + 1,
        jobs=job_names(request, daemon.runs.jobs),
    )
    has_more = len(page) > limit
    page = page[:limit]
    return json_response(
        {
            "notifications": [n.to_json() for n in page],
            "pagination": {
                "limit": limit,
                "has_more": has_more,
                "next_cursor": encode_cursor(page[-1].id) if has_more else None,
            },
        }
    )


@routes.post(PREFIX + "/notifiers/{name}/test")
@requires("admin")
async def test_notifier(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    name = request.match_info["name"]
    try:
        event = await daemon.notifications.test(name)
    except DeliveryError as exc:
        raise DeliveryFailed(f"notifier {name!r}: {exc}", notifier=name) from None
    return json_response({"notifier": name, "delivered": True, "event": event})


async def _snooze(request: web.Request, until: int | None) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    await daemon.notifications.snooze(job.name, until)
    return json_response({"job": job.name, "snoozed_until": iso_ms(daemon.notifications.snoozed_until(job.name))})


@routes.post(PREFIX + "/jobs/{name}/snooze")
@requires("admin")
async def snooze_job(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if set(body) - {"until"} or "until" not in body:
        raise BadRequest('the body is {"until": "<ISO-8601 time>"} (or null to unsnooze)')
    raw = body["until"]
    if raw is None:
        return await _snooze(request, None)
    if not isinstance(raw, str):
        raise BadRequest("until must be an ISO-8601 time, e.g. 2026-11-23T10:00:00Z, or null")
    try:
        until = parse_iso_ms(raw)
    except ValueError:
        raise BadRequest("until must be an ISO-8601 time, e.g. 2026-11-23T10:00:00Z, or null") from None
    return await _snooze(request, until)


@routes.delete(PREFIX + "/jobs/{name}/snooze")
@requires("admin")
async def unsnooze_job(request: web.Request) -> web.Response:
    return await _snooze(request, None)
