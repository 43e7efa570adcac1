"""Requests generated from the OpenAPI document, sent to a real `jobd serve` process over loopback.

For every documented operation, a bounded number of requests with path parameters, query
parameters, headers and bodies drawn from the document's schemas, mixed with junk of every kind.
Every answer: no 5xx, every 4xx is problem+json, and it is a response the document describes.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_check import DOC, NOT_YET_SERVED, check_response, documented_operations

TESTS = Path(__file__).parent
ROOT = TESTS.parent
EXAMPLES = 40
START_TIMEOUT_S = 30.0

OPERATIONS = sorted(set(documented_operations()) - NOT_YET_SERVED)
NAMES = ["noop", "slow", "bad", "nope"]
SEGMENT = st.text(
    st.characters(blacklist_characters="/?#", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JUNK_JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=250)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema accepts (for the kinds of schema the document uses)."""
    schema = resolve(schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(option) for option in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of([from_schema({**schema, "type": kind}) for kind in types])
    if types == "null":
        return st.none()
    if types == "boolean":
        return st.booleans()
    if types == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if types == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if types == "string":
        if schema.get("format") == "date-time":
            return st.datetimes().map(lambda t: t.isoformat() + "Z")
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 20), 40))
    if types == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=3)
    if types == "object":
        properties = schema.get("properties")
        if not properties:
            return st.dictionaries(st.text(max_size=8), JUNK_JSON, max_size=3)
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: from_schema(sub) for name, sub in properties.items() if name in required},
            optional={name: from_schema(sub) for name, sub in properties.items() if name not in required},
        )
    return JUNK_JSON


def as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def path_value(param: dict[str, Any]) -> st.SearchStrategy[str]:
    name = param["name"]
    known = {
        "name": st.sampled_from(NAMES),
        "run_id": st.integers(0, 40).map(str),
        "asset": st.sampled_from(["api-docs.js", "api-docs.css", "api-docs.html"]),
    }.get(name, st.nothing())
    return st.one_of(known, from_schema(param["schema"]).map(as_text).filter(bool), SEGMENT)


def query_value(param: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.one_of(
        from_schema(param["schema"]).map(as_text), st.text(max_size=20), st.integers().map(str), st.sampled_from(NAMES)
    )


@st.composite
def requests(draw: st.DrawFn, method: str, template: str) -> tuple[str, dict[str, str], bytes | None]:
    op = DOC["paths"][template][method.lower()]
    path = template
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for param in op.get("parameters", ()):
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", quote(draw(path_value(param)), safe=""))
        elif param["in"] == "query" and ((param.get("required") and draw(st.booleans())) or draw(st.booleans())):
            query.append((param["name"], draw(query_value(param))))
        elif param["in"] == "header" and draw(st.booleans()):
            headers[param["name"]] = draw(HEADER_TEXT)
    if draw(st.integers(0, 9)) == 0:  # now and then a parameter nobody asked for
        query.append((draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=8))))
    body: bytes | None = None
    if method != "GET":
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        kinds = [st.just(b""), JUNK_JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)]
        if schema is not None:
            kinds += [from_schema(schema).map(lambda v: json.dumps(v).encode())] * 3
        body = draw(st.one_of(kinds))
        headers["Content-Type"] = "application/json"
    url = path + ("?" + urlencode(query) if query else "")
    return url, headers, body


class Served:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            if response.getheader("Content-Type", "").startswith("text/event-stream"):
                # A stream may never end: its opening is enough.
                response.body = response.read1(65536)  # type: ignore[attr-defined]
            else:
                response.body = response.read()  # type: ignore[attr-defined]
            return response
        finally:
            connection.close()


def wait_for_listening(log_path: Path, proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    """Read the daemon's JSON log until it says where it listens (or fail after a deadline)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"jobd_listening"' in line:
                host, port = json.loads(line)["addresses"][0]
                return host, int(port)
        assert proc.poll() is None, f"jobd exited: {log_path.read_text()[-2000:]}"
        time.sleep(0.02)
    raise AssertionError(f"jobd did not start: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "jobd.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\nmax_body_bytes = 4096\nmax_batch_runs = 5\n'
        '[store]\npath = "state/jobd.db"\n[workers]\nshutdown_grace_s = 1\nkill_grace_s = 0.5\n'
        '[jobs.noop]\nhandler = "sample_jobs:noop"\noverlap = "allow"\n'
        '[jobs.slow]\nhandler = "sample_jobs:sleepy"\n'
        '[jobs.bad]\nhandler = "sample_jobs:fails"\noverlap = "allow"\nretries = 1\nretry_backoff_s = 0.01\n'
    )
    log_path = folder / "jobd.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobd", "serve", "-c", str(config), "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    try:
        host, port = wait_for_listening(log_path, proc)
        yield Served(host, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    errors = [line for line in log_path.read_text().splitlines() if '"request_failed"' in line]
    assert not errors, errors[:3]


@pytest.mark.parametrize("method, template", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests(served: Served, method: str, template: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(request=requests(method, template))
    def one(request: tuple[str, dict[str, str], bytes | None]) -> None:
        url, headers, body = request
        response = served.send(method, url, headers, body)
        status, content_type = response.status, response.getheader("Content-Type", "").split(";")[0].strip()
        raw: bytes = response.body  # type: ignore[attr-defined]
        where = f"{method} {url} → {status}: {raw[:300]!r}"
        assert status < 500, where
        if status >= 400:
            assert content_type == "application/problem+json", where
            problem = json.loads(raw)
            assert problem["status"] == status, where
        check_response(method, url, status, content_type, raw)

    one()
