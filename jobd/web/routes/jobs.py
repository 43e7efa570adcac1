"""Jobs: `/api/v1/jobs`, one job, and triggering, pausing and resuming it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web

from jobd import cronspec
from jobd.config import OVERLAP_POLICIES, JobConfig
from jobd.config.params import REDACTED
from jobd.errors import BadRequest
from jobd.lifecycle import Submission
from jobd.models import Run, RunStatus, TriggerSource, compact_json, iso_ms
from jobd.runner.confine import confinement_json
from jobd.watch import current_pause_reason
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, read_json_object
from jobd.web.priority import priority_of
from jobd.web.responses import json_response, json_text_response
from jobd.web.runjson import checked_params, run_json
from jobd.web.scope import visible
from jobd.web.timing import run_after_of

if TYPE_CHECKING:
    from jobd.app import Daemon

MAX_IDEMPOTENCY_KEY = 200
_TRIGGER_FIELDS = frozenset({"params", "runs", "overlap", "triggered_by", "run_at", "delay_s", "priority"})
_RUN_FIELDS = frozenset({"params", "run_at", "delay_s", "priority"})  # what one item of a batch may carry
_TRIGGER_SOURCES = {"api": TriggerSource.API, "manual": TriggerSource.MANUAL}
routes = web.RouteTableDef()


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def _local_time(epoch_ms: int | None, zone: str) -> str | None:
    """An instant in the job's time zone, to the second (what an operator reads a schedule in)."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=ZoneInfo(zone)).isoformat(timespec="seconds")


def job_json(daemon: Daemon, job: JobConfig, last: Run | None) -> dict[str, Any]:
    runs = daemon.runs
    state = runs.job_state(job.name)
    next_at = daemon.runs.next_run_at(job.name)
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
        "pause_reason": current_pause_reason(job, state),
        "next_run_at": iso_ms(next_at),
        "next_run_at_local": _local_time(next_at, job.timezone),
        "last_fire_at": iso_ms(state.last_fire_at),
        "skipped_fires": state.skipped_fires,
        "last_skipped_at": iso_ms(state.last_skipped_at),
        "last_skip_reason": state.last_skip_reason,
        "is_running": any(r.status is RunStatus.PROCESSING for r in active),
        "active_runs": [r.id for r in active],
        "last_run": run_json(daemon.runs.jobs, last) if last is not None else None,
        "consecutive_failures": state.consecutive_failures,
        "alert_after_failures": job.alert_after_failures,
        "failing": state.consecutive_failures >= job.alert_after_failures,
        "params_schema": job.params.json_schema(),
        "snoozed_until": iso_ms(daemon.notifications.snoozed_until(job.name)),
        "secret_env": {source.name: REDACTED for source in job.secret_env},
        "priority": job.priority,
        "groups": list(job.groups),
        **confinement_json(job),
    }


@routes.get(PREFIX + "/jobs")
@requires("read")
async def list_jobs(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    jobs = [job for job in daemon.runs.jobs.values() if visible(request, job.name)]
    last = await daemon.runs.last_runs_of([job.name for job in jobs])
    return json_response({"jobs": [job_json(daemon, job, last.get(job.name)) for job in jobs]})


@routes.get(PREFIX + "/jobs/{name}")
@requires("read")
async def get_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    return await _job_answer(daemon, daemon.runs.job(request.match_info["name"]))


async def _job_answer(daemon: Daemon, job: JobConfig) -> web.Response:
    last = await daemon.runs.last_runs_of([job.name])
    return json_response({"job": job_json(daemon, job, last.get(job.name))})


def _params(daemon: Daemon, job: JobConfig, value: Any, where: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return checked_params(job, value, where, daemon.environ)


@routes.post(PREFIX + "/jobs/{name}/trigger")
@requires("trigger")
async def trigger_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    body = await read_json_object(request)
    if not _TRIGGER_FIELDS.issuperset(body):
        unknown = sorted(set(body) - _TRIGGER_FIELDS)
        raise BadRequest(
            f"unknown field {unknown[0]!r} (expected params, runs, overlap, triggered_by, run_at, delay_s, priority)"
        )
    overlap = body.get("overlap")
    if overlap is not None and overlap not in OVERLAP_POLICIES:
        raise BadRequest(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}")
    given = body.get("triggered_by", "api")
    source = _TRIGGER_SOURCES.get(given) if isinstance(given, str) else None
    if source is None:
        raise BadRequest("triggered_by must be 'api' or 'manual'")
    now = daemon.runs.clock()
    run_after = run_after_of(body, now)
    priority = priority_of(body)
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
            if not isinstance(item, dict) or set(item) - _RUN_FIELDS:
                raise BadRequest(f"runs[{index}] must be an object with only params, run_at, delay_s, priority")
            where = f"runs[{index}]."
            submissions.append(
                Submission(
                    _params(daemon, job, item.get("params"), where + "params"),
                    run_after=run_after_of(item, now, prefix=where, default=run_after),
                    priority=priority_of(item, prefix=where, default=priority),
                )
            )
        runs = await daemon.runs.submit(job.name, submissions, triggered_by=source, overlap=overlap)
        return json_text_response(
            '{"runs":[' + ",".join([compact_json(run_json(daemon.runs.jobs, run)) for run in runs]) + "]}", status=202
        )
    submission = Submission(
        _params(daemon, job, body.get("params"), "params"), idempotency_key=key, run_after=run_after, priority=priority
    )
    [run] = await daemon.runs.submit(job.name, [submission], triggered_by=source, overlap=overlap)
    return json_text_response(
        '{"run":' + compact_json(run_json(daemon.runs.jobs, run)) + "}",
        status=202,
        headers={"Location": f"{PREFIX}/runs/{run.id}"},
    )


@routes.post(PREFIX + "/jobs/{name}/pause")
@requires("admin")
async def pause_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    await daemon.runs.set_paused(job.name, True)
    return await _job_answer(daemon, job)


@routes.post(PREFIX + "/jobs/{name}/resume")
@requires("admin")
async def resume_job(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    job = daemon.runs.job(request.match_info["name"])
    await daemon.runs.set_paused(job.name, False)
    return await _job_answer(daemon, job)
