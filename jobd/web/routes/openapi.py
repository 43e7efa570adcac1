"""The API contract served by jobd: the OpenAPI document, and a reference page rendered from it.

Both are public (no token): they describe the API, they do not show any of its data. The page is
plain HTML with a script and a style sheet of jobd's own (under /static/); nothing is loaded from
elsewhere.

The document in the package describes a daemon with tokens. One without them serves it without
the security requirements, so that a client generated from it does not ask for a token that no
one can give; `/metrics` keeps its own when a metrics token is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from jobd.config import Config
from jobd.web.keys import DAEMON
from jobd.web.paramdoc import add_job_params
from jobd.web.params import PREFIX
from jobd.web.routes.dashboard import STATIC_DIR

OPENAPI = Path(__file__).resolve().parent.parent / "openapi.json"
DOCS_PAGE = "api-docs.html"  # its script and style sheet are served from /static/ with the dashboard's
# The page runs only its own script and style, and talks only to this server.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'"
TOKEN_SCHEMES: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi_document", bytes)
routes = web.RouteTableDef()


def served_document(document: dict[str, Any], config: Config) -> dict[str, Any]:
    """The document as this daemon's configuration makes it true: with or without tokens, and
    the batch limit it sets."""
    served: dict[str, Any] = json.loads(json.dumps(document))
    served["components"]["schemas"]["TriggerRequest"]["properties"]["runs"]["maxItems"] = config.server.max_batch_runs
    add_job_params(served, config.jobs)
    if config.auth.enabled:
        return served
    served.pop("security", None)
    for item in served["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    if config.metrics.token:
        served["paths"]["/metrics"]["get"]["security"] = TOKEN_SCHEMES
    else:
        del served["components"]["securitySchemes"]
    return served


def setup(app: web.Application) -> None:
    document = served_document(json.loads(OPENAPI.read_text(encoding="utf-8")), app[DAEMON].config)
    app[DOCUMENT] = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    app.add_routes(routes)


@routes.get(PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


@routes.get("/api/docs")
async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC_DIR / DOCS_PAGE, headers={"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": CSP}
    )
