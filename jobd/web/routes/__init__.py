"""The HTTP API's routes, one module per resource, registered in one place."""

from __future__ import annotations

from aiohttp import web

from jobd.web.routes import (
    audit,
    backfill,
    dashboard,
    health,
    jobs,
    metrics,
    nodes,
    notifications,
    openapi,
    queue,
    runs,
    stats,
    tickets,
    whoami,
)
from jobd.web.tickets import TICKETS, Tickets


def setup(app: web.Application, ticketer: Tickets) -> None:
    """Every route but the streams' (see jobd.web.sse). `/runs/last` is registered before
    `/runs/{run_id}`, which would otherwise take it."""
    app[TICKETS] = ticketer
    for module in (jobs, runs, queue, nodes, health, stats, metrics):
        app.add_routes(module.routes)
    app.add_routes(backfill.routes)
    openapi.setup(app)
    app.add_routes(tickets.routes)
    app.add_routes(whoami.routes)
    app.add_routes(notifications.routes)
    app.add_routes(audit.routes)
    dashboard.setup(app)


__all__ = ["setup"]
