"""The dashboard: `/` serves its page, `/static/` its files; both with a strict Content-Security-Policy.

The page is plain HTML, CSS and ES modules from jobd itself: no build step, and nothing fetched
from another origin, since jobd often runs on hosts without internet access.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from jobd.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def is_dashboard_path(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    """A file of the page. Missing ones are a 404 problem like every other error (aiohttp's own
    static route answers them with an empty application/octet-stream 404)."""
    name = request.match_info["path"]
    try:
        path = (STATIC_DIR / name).resolve()
        found = path.is_relative_to(STATIC_DIR) and path.is_file()
    except (OSError, ValueError):  # e.g. a NUL byte in the name
        found = False
    if not found:
        raise NotFound(f"no file {name!r} in /static/")
    return web.FileResponse(path)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not is_dashboard_path(request.path):
        return
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Revalidate each time so an upgraded jobd never serves a page mixed from two versions.
    response.headers["Cache-Control"] = "no-cache"


def setup(app: web.Application) -> None:
    """The page at `/`, its files under `/static/`, and the headers of every dashboard response."""
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static_file)
    app.on_response_prepare.append(security_headers)
