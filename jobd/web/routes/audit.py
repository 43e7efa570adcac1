"""`GET /api/v1/audit`: the audit log, newest first, filtered and paged like the runs."""

from __future__ import annotations

from aiohttp import web

from jobd.errors import BadRequest
from jobd.store.audit import AuditFilter
from jobd.web.audit import ACTIONS
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, int_param, list_param, time_param
from jobd.web.responses import json_response
from jobd.web.routes.runs import MAX_PAGE, cursor_param, encode_cursor
from jobd.web.scope import job_names

routes = web.RouteTableDef()


def _name(request: web.Request, key: str) -> str | None:
    value = request.query.get(key) or None
    if value is not None and "\0" in value:
        raise BadRequest(f"{key} must not contain a NUL character", field=key)
    return value


def audit_filter(request: web.Request) -> AuditFilter:
    actions = tuple(action.lower() for action in list_param(request, "action"))
    for action in actions:
        if action not in ACTIONS:
            raise BadRequest(f"action must be one or more of {', '.join(ACTIONS)}", field="action")
    return AuditFilter(
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        token=_name(request, "token"),
        actions=actions,
        job=_name(request, "job"),
        # An admin token limited to some jobs reads the records about its jobs.
        jobs=job_names(request, request.app[DAEMON].runs.jobs),
        before_id=cursor_param(request),
    )


@routes.get(PREFIX + "/audit")
@requires("admin")
async def audit_log(request: web.Request) -> web.Response:
    where = audit_filter(request)
    limit = int_param(request, "limit", 50, 1, MAX_PAGE)
    records, total = await request.app[DAEMON].audit.page(where, limit=limit + 1)
    has_more = len(records) > limit
    records = records[:limit]
    last = records[-1].id if has_more and records else None
    return json_response(
        {
            "records": [record.to_json() for record in records],
            "pagination": {
                "total": total,
                "limit": limit,
                "has_more": has_more,
                "next_cursor": encode_cursor(last) if last is not None else None,
            },
        }
    )
