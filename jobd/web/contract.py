"""The API contract served by jobd: the OpenAPI document, and a reference page rendered from it.

Both are public (no token): they describe the API, they do not show any of its data. The page is
plain HTML with a script and a style sheet of jobd's own (under /static/); nothing is loaded from
elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from jobd.web.dashboard import STATIC_DIR
from jobd.web.params import PREFIX

OPENAPI = Path(__file__).with_name("openapi.json")
DOCS_PAGE = "api-docs.html"  # its script and style sheet are served from /static/ with the dashboard's
# The page runs only its own script and style, and talks only to this server.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'"

routes = web.RouteTableDef()


@routes.get(PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/json"})


@routes.get("/api/docs")
async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC_DIR / DOCS_PAGE, headers={"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": CSP}
    )
