"""Which API calls are audited, and the record of one, made from its request and its answer.

Every call that changes state is in `AUDITED`; the middleware hands its record to the audit log
once the answer is decided, refusals included (400, 403, 404, 409, 503): a call that was not
authenticated (401) is in the access log only, so that anyone who can reach the port cannot fill
the audit log. A test holds every route that is not a GET to this table.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from aiohttp import web

from jobd.store.audit import AuditRecord
from jobd.web.keys import DAEMON, REQUEST_ID, TOKEN
from jobd.web.params import PREFIX
from jobd.web.responses import PROBLEM_TYPE
from jobd.web.scope import RUN_JOB

# (method, canonical path) → action.
AUDITED = {
    ("POST", PREFIX + "/jobs/{name}/trigger"): "trigger",
    ("POST", PREFIX + "/jobs/{name}/backfill"): "backfill",
    ("POST", PREFIX + "/jobs/{name}/pause"): "pause",
    ("POST", PREFIX + "/jobs/{name}/resume"): "resume",
    ("POST", PREFIX + "/jobs/{name}/snooze"): "snooze",
    ("DELETE", PREFIX + "/jobs/{name}/snooze"): "unsnooze",
    ("POST", PREFIX + "/runs/{run_id}/cancel"): "cancel",
    ("POST", PREFIX + "/runs/{run_id}/retry"): "retry",
    ("POST", PREFIX + "/tickets"): "ticket",
}
ACTIONS = tuple(sorted(set(AUDITED.values())))
_RUN_PATH = re.compile(r"/runs/([0-9]{1,18})(?:/|$)")
_MAX_DETAIL = 500


def action_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return AUDITED.get((request.method, resource.canonical))


def _body(response: web.StreamResponse) -> dict[str, Any] | None:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _text(value: str) -> str:
    return value.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _run_id(text: str | None) -> int | None:
    found = _RUN_PATH.search(text or "")
    return int(found.group(1)) if found else None


def record_of(request: web.Request, response: web.StreamResponse, action: str) -> AuditRecord:
    info = request.match_info
    job = info.get("name")
    run_id = _run_id(request.path) if "run_id" in info else None
    target, detail, outcome = request.path, None, "ok"
    if response.status >= 400:
        problem = _body(response) if response.content_type == PROBLEM_TYPE else None
        kind = str((problem or {}).get("type", ""))
        outcome = kind.rpartition(":")[2] or f"http-{response.status}"
        detail = str((problem or {}).get("detail", "")) or None
    elif (location := response.headers.get("Location")) is not None:  # a trigger's or a retry's new run
        detail = "run " + location.rpartition("/")[2]
    elif action == "ticket":
        stream = str((_body(response) or {}).get("stream", ""))
        target, run_id = stream or target, _run_id(stream)
    if run_id is not None and job is None:
        # The job of a run: from the answer (cancel, retry), or the active runs (a refusal's).
        run = (_body(response) or {}).get("run") if response.status < 400 else None
        if isinstance(run, dict) and isinstance(run.get("job"), str):
            job = run["job"]
        elif (active := request.app[DAEMON].runs.active.get(run_id)) is not None:
            job = active.job
        else:
            job = request.get(RUN_JOB)
    token = request.get(TOKEN)
    texts = target + (job or "") + (detail or "")
    if "\0" in texts or not texts.isascii():
        # What PostgreSQL's text cannot hold (a NUL; a lone surrogate, from bytes that were not
        # UTF-8) is replaced: a record the database refuses would hold up the node's commits.
        target = _text(target)
        job, detail = (None if v is None else _text(v) for v in (job, detail))
    return AuditRecord(
        at=request.app[DAEMON].runs.clock(),
        token=token.name if token is not None else None,
        remote=request.remote,
        action=action,
        target=target,
        status=response.status,
        outcome=outcome,
        job=job,
        run_id=run_id,
        detail=detail[:_MAX_DETAIL] if detail else None,
        request_id=request.get(REQUEST_ID),
    )


async def record(request: web.Request, response: web.StreamResponse) -> None:
    """The middleware's hook after each answer: audited calls are handed to the audit log. Only a
    call about a finished run whose answer does not name its job (a refused cancel or retry, a
    ticket for its stream) reads the store, for the run's job."""
    action = action_of(request)
    if action is None or response.status == 401:
        return
    daemon = request.app[DAEMON]
    try:
        made = record_of(request, response, action)
        if made.job is None and made.run_id is not None and response.status != 404:
            run = await daemon.store.get_run(made.run_id)
            made = dataclasses.replace(made, job=run.job if run is not None else None)
        daemon.audit.record(made)
    except Exception:  # the answer is decided: it goes out, and the log says what was not recorded
        daemon.log.exception("audit_not_recorded", action=action, path=request.path)


__all__ = ["ACTIONS", "AUDITED", "action_of", "record", "record_of"]
