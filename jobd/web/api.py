"""The JSON API under /api/v1: jobs, runs, the queue and health."""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web

from jobd import cronspec
from jobd.config import OVERLAP_POLICIES, JobConfig
from jobd.errors import BadRequest, NotFound
from jobd.models import Run, RunStatus, TriggerSource, compact_json, iso_ms
from jobd.runlog import log_path
from jobd.runs import Submission
from jobd.store import RunFilter
from jobd.web import sse
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, enum_list, int_param, read_json_object, run_id_of, time_param

if TYPE_CHECKING:
    from jobd.daemon import Daemon

MAX_PAGE = 500
MAX_IDEMPOTENCY_KEY = 200
_TRIGGER_FIELDS = frozenset({"params", "runs", "overlap", "triggered_by"})
_TRIGGER_SOURCES = {"api": TriggerSource.API, "manual": TriggerSource.MANUAL}
routes = web.RouteTableDef()


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return json_text_response(compact_json(data), status=status, headers=headers)


def json_text_response(text: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=text.encode(), status=status, content_type="application/json", headers=headers)


# -- jobs ------------------------------------------------------------------------------------------


def _local_time(epoch_ms: int | None, zone: str) -> str | None:
    """An instant in the job's time zone, to the second (what an operator reads a schedule in)."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=ZoneInfo(zone)).isoformat(timespec="seconds")


def job_json(daemon: Daemon, job: JobConfig, last: Run | None) -> dict[str, Any]:
    runs = daemon.runs
    state = runs.job_state(job.name)
    next_at = daemon.next_run_at(job.name)
    active = runs.active_of(job.name)
    return {
        "name": job.name,
        "description": job.description,
        "kind": job.kind,
        "command": list(job.command) if job.command else None,
        "shell": job.shell,
        "handler": job.handler,
        "schedule": job.schedule,
        "schedule_description": cronspec.describe(job.schedule, job.name) if job.schedule else None,
        "timezone": job.timezone,
        "overlap": job.overlap,
        "max_concurrency": job.max_concurrency,
        "timeout_s": job.timeout_s,
        "retries": job.retries,
        "paused": state.paused,
        "next_run_at": iso_ms(next_at),
        "next_run_at_local": _local_time(next_at, job.timezone),
        "last_fire_at": iso_ms(state.last_fire_at),
        "skipped_fires": state.skipped_fires,
        "last_skipped_at": iso_ms(state.last_skipped_at),
        "is_running": any(r.status is RunStatus.PROCESSING for r in active),
        "active_runs": [r.id for r in active],
        "last_run": last.to_json() if last is not None else None,
        "consecutive_failures": state.consecutive_failures,
        "alert_after_failures": job.alert_after_failures,
        "failing": state.consecutive_failures >= job.alert_after_failures,
    }


@routes.get(PREFIX + "/jobs")
@requires("read")
async def list_jobs(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    last = await daemon.runs.last_runs_of(daemon.runs.jobs)
    return json_response({"jobs": [job_json(daemon, job, last.get(job.name)) for job in daemon.runs.jobs.values()]})


@routes.get(PREFIX + "/jobs/{name}")
@requires("read")
async def get_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    return await _job_answer(daemon, daemon.runs.job(request.match_info["name"]))


async def _job_answer(daemon: Daemon, job: JobConfig) -> web.Response:
    last = await daemon.runs.last_runs_of([job.name])
    return json_response({"job": job_json(daemon, job, last.get(job.name))})


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return value


@routes.post(PREFIX + "/jobs/{name}/trigger")
@requires("trigger")
async def trigger_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    body = await read_json_object(request)
    if not _TRIGGER_FIELDS.issuperset(body):
        unknown = sorted(set(body) - _TRIGGER_FIELDS)
        raise BadRequest(f"unknown field {unknown[0]!r} (expected params, runs, overlap, triggered_by)")
    overlap = body.get("overlap")
    if overlap is not None and overlap not in OVERLAP_POLICIES:
        raise BadRequest(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}")
    given = body.get("triggered_by", "api")
    source = _TRIGGER_SOURCES.get(given) if isinstance(given, str) else None
    if source is None:
        raise BadRequest("triggered_by must be 'api' or 'manual'")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    if key is not None and not key.isascii():
        try:
            key.encode()  # bytes that were not UTF-8 come from aiohttp as surrogates, which no store takes
        except UnicodeEncodeError:
            raise BadRequest("Idempotency-Key must be UTF-8 text") from None
    if "runs" in body:
        if "params" in body:
            raise BadRequest("give either params or runs, not both")
        items = body["runs"]
        limit = daemon.config.server.max_batch_runs
        if not isinstance(items, list) or not items:
            raise BadRequest("runs must be a non-empty list of objects")
        if len(items) > limit:
            # The limit in the problem lets a client split its batch to fit (the CLI does).
            raise BadRequest(f"at most {limit} runs per request (server.max_batch_runs)", max_batch_runs=limit)
        if key is not None:
            raise BadRequest("Idempotency-Key applies to single triggers, not to batches")
        submissions = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or set(item) - {"params"}:
                raise BadRequest(f"runs[{index}] must be an object with only 'params'")
            submissions.append(Submission(_params(item.get("params"), f"runs[{index}].params")))
        runs = await daemon.runs.submit(job.name, submissions, triggered_by=source, overlap=overlap)
        return json_text_response(
            '{"runs":[' + ",".join([compact_json(run.to_json()) for run in runs]) + "]}", status=202
        )
    submission = Submission(_params(body.get("params"), "params"), idempotency_key=key)
    [run] = await daemon.runs.submit(job.name, [submission], triggered_by=source, overlap=overlap)
    return json_text_response(
        '{"run":' + compact_json(run.to_json()) + "}", status=202, headers={"Location": f"{PREFIX}/runs/{run.id}"}
    )


@routes.post(PREFIX + "/jobs/{name}/pause")
@requires("admin")
async def pause_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    await daemon.set_paused(job.name, True)
    return await _job_answer(daemon, job)


@routes.post(PREFIX + "/jobs/{name}/resume")
@requires("admin")
async def resume_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    await daemon.set_paused(job.name, False)
    return await _job_answer(daemon, job)


# -- runs ------------------------------------------------------------------------------------------


def run_filter(request: web.Request) -> RunFilter:
    job = request.query.get("job")
    return RunFilter(
        job=job or None,
        status=enum_list(request, "status", RunStatus),
        triggered_by=enum_list(request, "triggered_by", TriggerSource),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
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
            "runs": [run.to_json() for run in runs],
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
    run = (await daemon.runs.last_runs_of([job])).get(job) or await daemon.store.last_run(job)
    if run is None:
        raise NotFound(f"job {job!r} has no runs yet", job=job)
    run = daemon.runs.active.get(run.id, run)
    return json_response({"run": run.to_json()})


@routes.get(PREFIX + "/runs/{run_id}")
@requires("read")
async def get_run(request: web.Request) -> web.StreamResponse:
    if sse.wants_stream(request):
        return await sse.run_events(request)
    daemon = _daemon(request)
    run = await daemon.runs.get(run_id_of(request))
    data = run.to_json(with_log=True)
    if run.id in daemon.runs.active:
        data["log_tail"] = daemon.pool.live_tail(run.id)
    return json_response({"run": data})


@routes.get(PREFIX + "/runs/{run_id}/log")
@requires("read")
async def get_run_log(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    run = await daemon.runs.get(run_id_of(request))
    path = log_path(daemon.config.store.logs_dir, run.id)
    if not path.exists():
        return web.Response(text=run.log_tail, content_type="text/plain", charset="utf-8")
    return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})


@routes.post(PREFIX + "/runs/{run_id}/cancel")
@requires("trigger")
async def cancel_run(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    run = await daemon.runs.cancel(run_id_of(request))
    return json_response({"run": run.to_json()})


@routes.post(PREFIX + "/runs/{run_id}/retry")
@requires("trigger")
async def retry_run(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    run = await daemon.runs.retry(run_id_of(request))
    return json_response({"run": run.to_json()}, status=202, headers={"Location": f"{PREFIX}/runs/{run.id}"})


# -- the queue and health --------------------------------------------------------------------------


@routes.get(PREFIX + "/queue")
@requires("read")
async def queue(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    return json_response(daemon.runs.queue_snapshot(daemon.pool.concurrency))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    if daemon.ready:
        return json_response({"status": "ready"})
    reason = "shutting down" if daemon.stopping else "starting"
    return json_response({"status": reason}, status=503)


for path in ("/healthz", PREFIX + "/healthz"):
    routes.get(path)(healthz)
for path in ("/readyz", PREFIX + "/readyz"):
    routes.get(path)(readyz)
