"""Liveness and readiness, at the root (for probes) and under /api/v1; open to anyone."""

from __future__ import annotations

from aiohttp import web

from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX
from jobd.web.responses import json_response

routes = web.RouteTableDef()


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.ready and daemon.cluster is not None and not daemon.cluster.reachable:
        return json_response({"status": "database unreachable"}, status=503, headers={"Retry-After": "5"})
    if daemon.ready:
        return json_response({"status": "ready"})
    reason = "shutting down" if daemon.stopping else "starting"
    return json_response({"status": reason}, status=503)


for path in ("/healthz", PREFIX + "/healthz"):
    routes.get(path)(healthz)
for path in ("/readyz", PREFIX + "/readyz"):
    routes.get(path)(readyz)
