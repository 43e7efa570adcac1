"""`GET /metrics`: the Prometheus text format, behind the metrics token when one is set."""

from __future__ import annotations

from aiohttp import web

from jobd.errors import Unauthorized
from jobd.metrics import CONTENT_TYPE
from jobd.web.auth import Authenticator, check_scope, find_token, presented_token, secret_matches
from jobd.web.keys import DAEMON
from jobd.web.scope import refuse, scope_of

routes = web.RouteTableDef()


def check_metrics_access(request: web.Request) -> None:
    """With `[metrics] token`, a scrape needs that token, or an API token when API auth is on.
    Without it, /metrics is read like any other GET: open when auth is off, read scope when on."""
    daemon = request.app[DAEMON]
    auth = daemon.config.auth
    metrics_token = daemon.config.metrics.token
    if not metrics_token:
        check_scope(Authenticator(auth).scope_of(request), "read")
        _not_limited(request)
        return
    presented = presented_token(request)
    if presented is not None:
        if secret_matches(presented, metrics_token):
            return
        token = find_token(auth, presented) if auth.enabled else None
        if token is not None:
            if token.jobs:
                raise refuse("/metrics")
            return
    raise Unauthorized("the metrics token is required: send 'Authorization: Bearer TOKEN'")


def _not_limited(request: web.Request) -> None:
    """Metrics are labelled by job: every job's name and figures (see jobd.web.scope)."""
    if scope_of(request) is not None:
        raise refuse("/metrics")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    check_metrics_access(request)
    body = request.app[DAEMON].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
