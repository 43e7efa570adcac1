"""`GET /api/v1/whoami`: what the caller may do, so a page can show only the buttons that will work.

The dashboard learns its scope here instead of guessing from failed requests, and learns which
optional parts of the API this daemon serves (live streams, stream tickets, stats) without
probing them and logging 404s.
"""

from __future__ import annotations

from aiohttp import web

from jobd.errors import Unauthorized
from jobd.web.auth import requires
from jobd.web.keys import DAEMON, TOKEN
from jobd.web.params import PREFIX
from jobd.web.responses import json_response

routes = web.RouteTableDef()

# Optional endpoints a client may use when present: feature name → canonical path.
FEATURES = {
    "events": PREFIX + "/events",
    "run_events": PREFIX + "/runs/{run_id}/events",
    "tickets": PREFIX + "/tickets",
    "stats": PREFIX + "/stats",
    "audit": PREFIX + "/audit",
}


def served_features(app: web.Application) -> list[str]:
    paths = {resource.canonical for resource in app.router.resources()}
    return sorted(name for name, path in FEATURES.items() if path in paths)


@routes.get(PREFIX + "/whoami")
@requires("read")
async def whoami(request: web.Request) -> web.Response:
    auth = request.app[DAEMON].config.auth
    features = served_features(request.app)
    if not auth.enabled:
        return json_response({"auth": False, "scope": "admin", "token": None, "jobs": None, "features": features})
    token = request.get(TOKEN)
    if token is None:
        # Reached with a stream ticket: tickets are for streams, not for learning who one is.
        raise Unauthorized("whoami needs a token in the Authorization or X-API-Key header")
    jobs = list(token.jobs) if token.jobs else None
    return json_response({"auth": True, "scope": token.scope, "token": token.name, "jobs": jobs, "features": features})
