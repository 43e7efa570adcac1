"""Tokens limited to some jobs (`jobs = ["backup-*", "report"]` in a token's config).

Such a token sees and acts on the jobs its patterns match, and on their runs, and nothing else:
lists leave the others out, and every path that names another job or a run of another job
answers 404, as for a job that does not exist, so that a token does not learn what it may not
see. Its stream tickets carry its patterns (see tickets).

`guard` runs for every request after authentication. Paths under `/jobs/{name}` or
`/runs/{run_id}` are checked here, whatever their handler. Every other route is listed in `POLICIES`: `filtered`
(its handler filters by the scope), `open` (it tells nothing of jobs) or `refused` (403 for a
token limited to jobs); a route listed nowhere is refused, so a new route is closed to limited
tokens until someone decides what it shows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from jobd.config.tokens import matches
from jobd.errors import Forbidden, JobNotFound, RunNotFound
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX, run_id_of

if TYPE_CHECKING:
    from jobd.app import Daemon
    from jobd.models import Run


@dataclasses.dataclass(frozen=True, slots=True)
class JobScope:
    patterns: tuple[str, ...]

    def allows(self, job: str) -> bool:
        return matches(self.patterns, job)

    def names(self, jobs: Iterable[str]) -> tuple[str, ...]:
        """The configured jobs it may see. The history of a job no longer configured is left out."""
        return tuple(sorted(name for name in jobs if self.allows(name)))


JOB_SCOPE: web.RequestKey[JobScope] = web.RequestKey("job_scope", JobScope)
RUN_JOB: web.RequestKey[str] = web.RequestKey("run_job", str)  # the job of the run a path names, once looked up

FILTERED, OPEN, REFUSED = "filtered", "open", "refused"
# Routes that name no job or run, and what a token limited to jobs gets from them.
POLICIES = {
    PREFIX + "/jobs": FILTERED,
    PREFIX + "/runs": FILTERED,
    PREFIX + "/runs/last": FILTERED,  # ?job= of another job: 404 as for a job without runs
    PREFIX + "/queue": FILTERED,
    PREFIX + "/stats": FILTERED,
    PREFIX + "/events": FILTERED,
    PREFIX + "/tickets": FILTERED,
    PREFIX + "/audit": FILTERED,
    PREFIX + "/notifications": FILTERED,
    PREFIX + "/notifiers/{name}/test": REFUSED,  # a notifier serves jobs the token may not see
    PREFIX + "/whoami": OPEN,
    PREFIX + "/nodes": OPEN,  # how many runs each node executes, not which
    "/metrics": REFUSED,  # labelled by job: every job's name and figures
}


def scope_of(request: web.Request) -> JobScope | None:
    """The caller's job scope; None for a token that sees every job (or auth off)."""
    return request.get(JOB_SCOPE)


def visible(request: web.Request, job: str) -> bool:
    scope = scope_of(request)
    return scope is None or scope.allows(job)


def job_names(request: web.Request, jobs: Iterable[str]) -> tuple[str, ...] | None:
    """The configured jobs the caller may see, for a store filter; None: every job."""
    scope = scope_of(request)
    return None if scope is None else scope.names(jobs)


def refuse(what: str) -> Forbidden:
    return Forbidden(f"{what} is not open to a token limited to some jobs")


async def run_of(daemon: Daemon, run_id: int) -> Run | None:
    return daemon.runs.active.get(run_id) or await daemon.store.get_run(run_id)


async def check_run(request: web.Request, daemon: Daemon, run_id: int) -> None:
    """404 for a run the caller may not see, as for one that does not exist."""
    scope = scope_of(request)
    if scope is None:
        return
    run = await run_of(daemon, run_id)
    if run is None or not scope.allows(run.job):
        raise RunNotFound(run_id)
    request[RUN_JOB] = run.job


def policy(path: str) -> str:
    """What a token limited to jobs gets from a route (its canonical path)."""
    if path.startswith(PREFIX + "/jobs/{name}"):
        return "job"
    if path.startswith(PREFIX + "/runs/{run_id}"):
        return "run"
    return POLICIES.get(path, REFUSED)


async def guard(request: web.Request) -> None:
    """The middleware's check after authentication (see the module's docstring)."""
    scope = scope_of(request)
    if scope is None:
        return
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    kind = policy(path)
    if kind == "job":
        name = request.match_info["name"]
        if not scope.allows(name):
            raise JobNotFound(name)
    elif kind == "run":
        await check_run(request, request.app[DAEMON], run_id_of(request))
    elif kind == REFUSED:
        raise refuse(path)


__all__ = ["JOB_SCOPE", "POLICIES", "JobScope", "check_run", "guard", "job_names", "policy", "scope_of", "visible"]
