"""The aiohttp application: one `create_app(daemon)`, no globals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from jobd.web import audit, cors, routes, scope, sse, tickets
from jobd.web.auth import Authenticator
from jobd.web.keys import DAEMON
from jobd.web.middleware import make_middleware

if TYPE_CHECKING:
    from jobd.app import Daemon

STATIC_DIR = routes.dashboard.STATIC_DIR


def create_app(daemon: Daemon) -> web.Application:
    """The whole HTTP surface. Its startup starts the daemon's services in order; its cleanup stops
    them in reverse (see Daemon.contexts)."""
    ticketer = tickets.Tickets(daemon.config.auth.ticket_ttl_s)
    auth = Authenticator(daemon.config.auth, ticket_check=ticketer.check)
    app = web.Application(
        middlewares=[
            make_middleware(
                daemon.log.bind(component="access"), check=auth.check, guard=scope.guard, answered=audit.record
            )
        ],
        client_max_size=daemon.config.server.max_body_bytes,
    )
    app[DAEMON] = daemon
    app.on_response_prepare.append(daemon.metrics.count_response)
    routes.setup(app, ticketer)
    sse.setup(app, daemon)
    daemon.metrics.count_streams(lambda: len(app[sse.STREAMS]))
    cors.setup(app, daemon.config.server.cors_origins)
    app.cleanup_ctx.extend(daemon.contexts())
    sse.relay.setup(app, daemon)
    return app
