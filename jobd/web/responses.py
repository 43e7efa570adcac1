"""What handlers answer with: JSON bodies, and RFC 9457 problems for every error."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from jobd.models import compact_json

PROBLEM_TYPE = "application/problem+json"


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return json_text_response(compact_json(data), status=status, headers=headers)


def json_text_response(text: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A body already encoded as JSON text (a run's own encoding, a list of them)."""
    return web.Response(body=text.encode(), status=status, content_type="application/json", headers=headers)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"type": f"urn:jobd:problem:{slug}", "title": title, "status": status, "detail": detail}
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return web.Response(
        status=status,
        body=json.dumps(body, default=str).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


__all__ = ["PROBLEM_TYPE", "json_response", "json_text_response", "problem"]
