"""The aiohttp application: one `create_app(daemon)`, no globals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from jobd.web import api
from jobd.web import dashboard
from jobd.web import session
from jobd.web.auth import Authenticator
from jobd.web.keys import DAEMON
from jobd.web.middleware import make_middleware

if TYPE_CHECKING:
    from jobd.daemon import Daemon


def create_app(daemon: Daemon) -> web.Application:
    """The whole HTTP surface. Its startup starts the daemon; its cleanup stops it."""
    auth = Authenticator(daemon.config.auth)
    app = web.Application(
        middlewares=[make_middleware(daemon.log.bind(component="access")), auth.middleware()],
        client_max_size=daemon.config.server.max_body_bytes,
    )
    app[DAEMON] = daemon
    app.add_routes(api.routes)
    app.add_routes(session.routes)
    dashboard.setup(app)
    app.router.add_static("/static", dashboard.STATIC_DIR)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await daemon.start()
        yield
        await daemon.close()

    app.cleanup_ctx.append(lifecycle)
    return app
