"""`POST /api/v1/tickets`: a short-lived ticket for one stream, with the scope of the token that asks."""

from __future__ import annotations

import re

from aiohttp import web

from jobd.errors import BadRequest
from jobd.models import iso_ms
from jobd.web.auth import check_scope, requires
from jobd.web.keys import DAEMON, TOKEN
from jobd.web.params import PREFIX, read_json_object
from jobd.web.responses import json_response
from jobd.web.scope import check_run, scope_of
from jobd.web.tickets import TICKETS, stream_scope

routes = web.RouteTableDef()
_RUN_STREAM = re.compile(r"^/api/v1/runs/([0-9]{1,18})(?:/events)?$")


@routes.post(PREFIX + "/tickets")
@requires("read")
async def mint_ticket(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"stream"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (expected stream)")
    stream = body.get("stream")
    if not isinstance(stream, str):
        raise BadRequest("stream is required: the path of the stream, e.g. /api/v1/runs/42/events")
    path = stream.partition("?")[0]
    needed = stream_scope(path)
    if needed is None:
        raise BadRequest(
            f"{path!r} is not a stream; tickets are for /api/v1/runs/{{id}}/events, /api/v1/runs/{{id}} "
            "(as a stream) and /api/v1/events"
        )
    token = request.get(TOKEN)
    scope = token.scope if token is not None else "admin"  # no token: auth is off
    check_scope(scope, needed)
    limited = scope_of(request)
    run = _RUN_STREAM.match(path)
    if limited is not None and run is not None:
        await check_run(request, request.app[DAEMON], int(run.group(1)))  # 404 for another job's run
    jobs = limited.patterns if limited is not None else ()
    ticket, expires = request.app[TICKETS].mint(path, scope, jobs=jobs)
    return json_response({"ticket": ticket, "stream": path, "expires_at": iso_ms(expires)}, status=201)
