"""`GET /api/v1/stats`: run statistics over the last days, for every job or one."""

from __future__ import annotations

from aiohttp import web

from jobd.errors import JobNotFound
from jobd.stats import MAX_DAYS, period, stats_json
from jobd.web import scoped
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, int_param
from jobd.web.responses import json_response
from jobd.web.scope import job_names, visible

routes = web.RouteTableDef()


@routes.get(PREFIX + "/stats")
@requires("read")
async def stats(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    days = int_param(request, "days", 30, 1, MAX_DAYS)
    job = request.query.get("job") or None
    if job is not None:
        daemon.runs.job(job)  # 404 for a job that is not configured
        if not visible(request, job):
            raise JobNotFound(job)
    first_day, last_day = period(daemon.runs.clock(), days)
    jobs = job_names(request, daemon.runs.jobs)
    if job is None and jobs is not None:
        raw = await scoped.run_stats(daemon, jobs, first_day, last_day)
        return json_response(stats_json(raw, job=None, jobs=jobs))
    raw = await daemon.store.run_stats(first_day=first_day, last_day=last_day, job=job)
    return json_response(stats_json(raw, job=job, jobs=daemon.runs.jobs))
