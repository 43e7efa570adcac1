"""Checking jobd against its OpenAPI document (jobd/web/openapi.json): routes and responses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OUTPUT = Path(__file__).resolve().parent.parent / "jobd" / "web" / "openapi.json"
DOC: dict[str, Any] = json.loads(OUTPUT.read_text(encoding="utf-8"))
DOC_URI = "urn:jobd:openapi"
METHODS = ("get", "put", "post", "delete", "patch", "options", "head")

# Documented, built on other branches, not served here yet. When one of them lands, the drift test
# fails until it is taken out of this set.
NOT_YET_SERVED: frozenset[tuple[str, str]] = frozenset()

FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if isinstance(value, str):
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@FORMATS.checks("date", raises=ValueError)
def _date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
    return True


def documented_operations(doc: dict[str, Any] = DOC) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def app_operations(app: web.Application) -> dict[tuple[str, str], Any]:
    """(METHOD, path template) → handler for every route of the app. HEAD, which aiohttp adds to
    every GET, is left out; a static folder is documented as {prefix}/{path}."""
    found = {}
    for resource in app.router.resources():
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{path}"
        for route in resource:
            if route.method != "HEAD":
                found[(route.method, path)] = route.handler
    return found


def template_for(path: str, doc: dict[str, Any] = DOC) -> str | None:
    """The documented path template a path as sent (percent-encoded, no query) matches, the way
    aiohttp routes it: segment by segment, decoded (%2F stays inside its segment), and literal
    segments win over parameters (/api/v1/runs/last is not /api/v1/runs/{run_id})."""
    parts = [unquote(part) for part in path.split("/")]
    best: tuple[int, str] | None = None
    for template in doc["paths"]:
        pieces = template.split("/")
        if len(pieces) != len(parts):
            continue
        literal = 0
        for piece, part in zip(pieces, parts):
            if piece.startswith("{") and piece.endswith("}"):
                if not part:
                    break
            elif piece == part:
                literal += 1
            else:
                break
        else:
            if best is None or literal > best[0]:
                best = (literal, template)
    return None if best is None else best[1]


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


@cache
def validator_at(pointer: str) -> Draft202012Validator:
    """A validator for the schema at this JSON pointer of the document; its $refs resolve in it."""
    registry = Registry().with_resource(DOC_URI, Resource(contents=DOC, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"}, registry=registry, format_checker=FORMATS)


def schema_errors(pointer: str, instance: Any) -> list[str]:
    errors = sorted(validator_at(pointer).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5]]


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> str:
    """Raise AssertionError unless the response is one the document describes; returns the template.
    `path` is as sent, query string included or not."""
    template = template_for(path.split("?")[0])
    where = f"{method} {path} → {status} {content_type}"
    assert template is not None, f"{where}: no documented path matches"
    op = DOC["paths"][template].get(method.lower())
    assert op is not None, f"{where}: {method} is not documented for {template}"
    responses = op["responses"]
    assert str(status) in responses, f"{where}: status not documented (documented: {sorted(responses)})"
    response = responses[str(status)]
    media_types = response.get("content")
    if media_types is None:
        return template
    assert content_type in media_types, f"{where}: content type not documented (documented: {sorted(media_types)})"
    if content_type.endswith("json"):
        try:
            instance = json.loads(body)
        except ValueError as exc:
            raise AssertionError(f"{where}: body is not JSON: {exc}") from None
        pointer = _pointer(
            "paths", template, method.lower(), "responses", str(status), "content", content_type, "schema"
        )
        errors = schema_errors(pointer, instance)
        assert not errors, f"{where}: body does not match the document: {errors}"
    return template


def every_schema() -> Iterable[tuple[str, dict[str, Any]]]:
    yield from DOC["components"]["schemas"].items()
