"""Runs: the history with its filters and pages, one run (or its stream), its log, cancel and retry."""

from __future__ import annotations

import base64
import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from jobd.errors import BadRequest, NotFound
from jobd.lifecycle import chains
from jobd.models import Run, RunStatus, TriggerSource
from jobd.runlog import log_path
from jobd.store import RunFilter
from jobd.web import sse
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, enum_list, int_param, run_id_of, time_param
from jobd.web.responses import json_response
from jobd.web.runjson import run_json
from jobd.web.scope import job_names, visible
from jobd.web.sse.relay import RELAY

if TYPE_CHECKING:
    from jobd.app import Daemon

MAX_PAGE = 500
routes = web.RouteTableDef()


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def run_filter(request: web.Request) -> RunFilter:
    job = request.query.get("job")
    return RunFilter(
        job=job or None,
        jobs=job_names(request, request.app[DAEMON].runs.jobs),
        status=enum_list(request, "status", RunStatus),
        triggered_by=enum_list(request, "triggered_by", TriggerSource),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        parent=int_param(request, "parent", 0, 1, 10**18 - 1) or None,
    )


def encode_cursor(run_id: int) -> str:
    return base64.urlsafe_b64encode(str(run_id).encode()).decode().rstrip("=")


def cursor_param(request: web.Request) -> int | None:
    """`?cursor=` from a previous page's pagination.next_cursor: the page starts below that run."""
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.isdigit() or len(text) > 18:
        raise BadRequest("cursor is not valid: pass pagination.next_cursor from a previous page")
    return int(text)


@routes.get(PREFIX + "/runs")
@requires("read")
async def list_runs(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    where = run_filter(request)
    limit = int_param(request, "limit", 50, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, 10**12)
    before = cursor_param(request)
    page = where if before is None else dataclasses.replace(where, before_id=before)
    # One run more than asked tells whether another page follows, with or without a cursor.
    runs, total = await daemon.runs.list(page, limit=limit + 1, offset=offset)
    has_more = len(runs) > limit
    runs = runs[:limit]
    statistics = await daemon.store.summarize_runs(where)
    return json_response(
        {
            "runs": [run_json(daemon.runs.jobs, run) for run in runs],
            "pagination": {
                "total": total,
                "limit": limit,
                "offset": offset,
                "has_more": has_more,
                "next_cursor": encode_cursor(runs[-1].id) if has_more else None,
            },
            "statistics": statistics,
        }
    )


@routes.get(PREFIX + "/runs/last")
@requires("read")
async def last_run(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = request.query.get("job")
    if not job:
        raise BadRequest("the job query parameter is required, e.g. /api/v1/runs/last?job=nightly")
    if not visible(request, job):
        raise NotFound(f"job {job!r} has no runs yet", job=job)
    run = (await daemon.runs.last_runs_of([job])).get(job) or await daemon.store.last_run(job)
    if run is None:
        raise NotFound(f"job {job!r} has no runs yet", job=job)
    run = daemon.runs.active.get(run.id, run)
    return json_response({"run": run_json(daemon.runs.jobs, run)})


@routes.get(PREFIX + "/runs/{run_id}")
@requires("read")
async def get_run(request: web.Request) -> web.StreamResponse:
    if sse.wants_stream(request):
        return await sse.run_events(request)
    daemon = _daemon(request)
    run = await daemon.runs.get(run_id_of(request))
    data = run_json(daemon.runs.jobs, run, with_log=True)
    if run.id in daemon.runs.active:
        data["log_tail"] = daemon.pool.live_tail(run.id)
    data["children"] = await _children(daemon, run)
    return json_response({"run": data})


async def _children(daemon: Daemon, run: Run) -> list[dict[str, Any]]:
    """What the run's end made (its chain), each child with its status as it is now."""
    ids = [child["run_id"] for child in run.children if child.get("run_id") is not None]
    found = {child.id: daemon.runs.active.get(child.id, child) or child for child in await daemon.store.get_runs(ids)}
    return chains.children_json(run.children, found)


@routes.get(PREFIX + "/runs/{run_id}/log")
@requires("read")
async def get_run_log(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    run = await daemon.runs.get(run_id_of(request))
    path = log_path(daemon.config.store.logs_dir, run.id)
    if not path.exists():
        # In a cluster, the log file is on the disk of the node that executed the run.
        node = request.app[RELAY].executed_elsewhere(request, run)
        if node is not None:
            return await request.app[RELAY].run_log(request, run, node)
        return web.Response(text=run.log_tail, content_type="text/plain", charset="utf-8")
    return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})


@routes.post(PREFIX + "/runs/{run_id}/cancel")
@requires("trigger")
async def cancel_run(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    run = await daemon.runs.cancel(run_id_of(request))
    return json_response({"run": run_json(daemon.runs.jobs, run)})


@routes.post(PREFIX + "/runs/{run_id}/retry")
@requires("trigger")
async def retry_run(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    run = await daemon.runs.retry(run_id_of(request))
    return json_response(
        {"run": run_json(daemon.runs.jobs, run)}, status=202, headers={"Location": f"{PREFIX}/runs/{run.id}"}
    )
