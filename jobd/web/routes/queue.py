"""`GET /api/v1/queue`: run counts by status, the workers, the oldest PENDING run, and the
shared concurrency groups (used, limit, waiting)."""

from __future__ import annotations

from aiohttp import web

from jobd.lifecycle.groups import usage
from jobd.web import scoped
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX
from jobd.web.responses import json_response
from jobd.web.scope import job_names

routes = web.RouteTableDef()


@routes.get(PREFIX + "/queue")
@requires("read")
async def queue(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    jobs = job_names(request, daemon.runs.jobs)
    if jobs is not None:
        return json_response(await scoped.queue(daemon, jobs))
    snapshot = daemon.runs.queue_snapshot(daemon.pool.concurrency)
    snapshot["groups"] = usage(daemon.config.groups, daemon.config.jobs, daemon.runs.active.values())
    return json_response(snapshot)
