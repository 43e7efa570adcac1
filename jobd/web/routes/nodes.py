"""`GET /api/v1/nodes`: the nodes of the cluster with their heartbeats (one node on SQLite).

`cluster` says which: `jobd status` and the dashboard show the nodes only in a cluster."""

from __future__ import annotations

import os
import socket

from aiohttp import web

from jobd.models import iso_ms
from jobd.web.auth import requires
from jobd.web.keys import DAEMON
from jobd.web.params import PREFIX
from jobd.web.responses import json_response

routes = web.RouteTableDef()


@routes.get(PREFIX + "/nodes")
@requires("read")
async def nodes(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    cluster = daemon.cluster
    if cluster is None:
        now = daemon.runs.clock()
        listed = [
            {
                "name": daemon.config.cluster.node_name,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": iso_ms(daemon.started_at),
                "heartbeat_at": iso_ms(now),
                "running": daemon.backend.processing_count(),
                "alive": True,
                "url": None,
                "heartbeat_age_s": 0.0,
            }
        ]
    else:
        listed = [
            {
                "name": node.name,
                "host": node.host,
                "pid": node.pid,
                "started_at": iso_ms(node.started_at),
                "heartbeat_at": iso_ms(node.heartbeat_at),
                "running": node.running,
                "alive": node.alive,
                "url": node.url,
                "heartbeat_age_s": round(max(node.heartbeat_age_ms, 0) / 1000, 3),
            }
            for node in await cluster.life.nodes()
        ]
    return json_response({"cluster": cluster is not None, "node": daemon.config.cluster.node_name, "nodes": listed})
