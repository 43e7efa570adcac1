"""Backfill: `POST /api/v1/jobs/{name}/backfill`, a run for each past fire time in a range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web

from jobd.catchup import range_fires
from jobd.cronspec import CronSpec
from jobd.errors import BadRequest, Conflict
from jobd.models import compact_json, iso_ms
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, read_json_object
from jobd.web.responses import json_response, json_text_response
from jobd.web.runjson import run_json

if TYPE_CHECKING:
    from jobd.app import Daemon

DEFAULT_MAX_RUNS = 100
MAX_RUNS = 1000
MAX_RANGE = timedelta(days=3660)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIELDS = frozenset({"from", "to", "max_runs", "dry_run"})
routes = web.RouteTableDef()


def _instant(body: dict[str, Any], field: str) -> datetime:
    value = body.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"{field} is required: an ISO 8601 time with its offset", field=field)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{field}: {value!r} is not an ISO 8601 time", field=field) from None
    if when.utcoffset() is None:
        raise BadRequest(f"{field}: {value!r} has no offset (add Z or +01:00)", field=field)
    return when


def _max_runs(body: dict[str, Any]) -> int:
    value = body.get("max_runs", DEFAULT_MAX_RUNS)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integers include 5.0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNS:
        raise BadRequest(f"max_runs must be an integer from 1 to {MAX_RUNS}", field="max_runs")
    return value


def _ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def _local(when: datetime, zone: ZoneInfo) -> str:
    return when.astimezone(zone).isoformat(timespec="seconds")


@routes.post(PREFIX + "/jobs/{name}/backfill")
@requires("trigger")
async def backfill_job(request: web.Request) -> web.Response:
    daemon: Daemon = request.app[DAEMON]
    job = daemon.runs.job(request.match_info["name"])
    body = await read_json_object(request)
    if not _FIELDS.issuperset(body):
        unknown = sorted(set(body) - _FIELDS)[0]
        raise BadRequest(f"unknown field {unknown!r} (expected from, to, max_runs, dry_run)", field=unknown)
    start, end, limit = _instant(body, "from"), _instant(body, "to"), _max_runs(body)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false", field="dry_run")
    if job.schedule is None:
        raise Conflict(f"job {job.name!r} has no schedule: it has no fire times to backfill", job=job.name)
    if start < _EPOCH:
        raise BadRequest(f"from: {body['from']!r} is before 1970", field="from")
    if start >= end:
        raise BadRequest("from must be before to", field="from")
    now = daemon.clock.now()
    if end > now:
        raise BadRequest(f"to must not be in the future (now is {iso_ms(_ms(now))})", field="to")
    upcoming = daemon.runs.next_run_at(job.name)
    if upcoming is not None and _ms(end) > upcoming:
        # A fire due but not made yet (jitter, a late loop) is the scheduler's to make.
        raise BadRequest(f"to: the fire at {iso_ms(upcoming)} is still to be made by the scheduler", field="to")
    if end - start > MAX_RANGE:
        raise BadRequest(f"the range is longer than {MAX_RANGE.days} days", field="to")
    zone = ZoneInfo(job.timezone)
    found = range_fires(CronSpec.parse(job.schedule, job.name), zone, start, end, limit, job.window)
    times = found.times
    if len(times) > limit:
        raise BadRequest(
            f"the range holds more than max_runs={limit} fire times: narrow it or raise max_runs (at most {MAX_RUNS})",
            field="max_runs",
            max_runs=limit,
        )
    listed = {
        "job": job.name,
        "timezone": job.timezone,
        "fire_times": [iso_ms(_ms(at)) for at in times],
        "fire_times_local": [_local(at, zone) for at in times],
        # Left out, not made: the job's calendars or active period exclude them.
        "excluded": [
            {"at": iso_ms(_ms(at)), "at_local": _local(at, zone), "excluded_by": why} for at, why in found.excluded
        ],
        "excluded_truncated": found.excluded_more,
    }
    if dry_run:
        return json_response({**listed, "dry_run": True})
    made, existing = await daemon.runs.backfill(job.name, times)
    head = compact_json({**listed, "dry_run": False, "existing": [iso_ms(at) for at in existing]})
    runs = ",".join(compact_json(run_json(daemon.runs.jobs, run)) for run in made)
    return json_text_response(head[:-1] + ',"runs":[' + runs + "]}", status=202)
