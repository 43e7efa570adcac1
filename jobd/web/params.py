"""Reading what a request sends: the run id in its path, its query parameters and its JSON body.

Shared by the route modules, so that every endpoint reads an input the same way and refuses a bad
one with the same problem (400, or 404 for an id that cannot name a run).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from jobd.errors import BadRequest, NotFound
from jobd.models import RunStatus, loads_standard, parse_iso_ms

# Every API path starts with it.
PREFIX = "/api/v1"
MAX_JSON_DEPTH = 64


def run_id_of(request: web.Request) -> int:
    raw = request.match_info["run_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is True too
        raise NotFound(f"no run with id {raw!r}", run_id=raw)
    return int(raw)


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    text = raw.strip()
    # ASCII only: int() would also read "５" or "٣", and numbers of thousands of digits.
    if not (text.isascii() and text.lstrip("+-").isdigit() and len(text) <= 20):
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def time_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_iso_ms(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO-8601 time, e.g. 2026-11-23T10:00:00Z") from None


def list_param(request: web.Request, name: str) -> list[str]:
    """`?name=a,b&name=c` → ["a", "b", "c"]: repeated and comma-separated values, blanks dropped."""
    return [part.strip() for item in request.query.getall(name, []) for part in item.split(",") if part.strip()]


def enum_list(request: web.Request, name: str, kind: type[Any]) -> tuple[Any, ...]:
    values = list_param(request, name)
    try:
        return tuple(kind(value.upper() if kind is RunStatus else value.lower()) for value in values)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise BadRequest(f"{name} must be one or more of {allowed}") from None


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


class _UndecodableBody(BadRequest):
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {}.

    Only standard JSON is taken: NaN and Infinity would be stored and echoed back as text no JSON
    parser reads, and a value nested deeper than MAX_JSON_DEPTH could not be written out again.
    """
    try:
        raw = await request.read()
    except RequestPayloadError:  # a Content-Encoding (gzip, deflate, ...) the bytes do not decode with
        # What is left of the body cannot be read: the connection ends after the answer, and aiohttp
        # is not left to drain it (it would hit the same error again).
        request.content.feed_eof()
        request.protocol.close()
        raise _UndecodableBody("the body does not decode with its Content-Encoding") from None
    if not raw.strip():
        return {}
    try:
        body = loads_standard(raw)
    except RecursionError:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # also numbers too long for int()
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    # Each level opens a bracket: a body with few of them needs no walk (most bodies).
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    return body
