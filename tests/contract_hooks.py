"""Schemathesis hooks for tests/test_contract.py (loaded by schemathesis, not by pytest)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import schemathesis

DOCUMENT = json.loads((Path(__file__).resolve().parent.parent / "jobd" / "web" / "openapi.json").read_text())
QUERY_PATTERNS = {
    (path, method.upper(), parameter["name"]): re.compile(parameter["schema"]["pattern"])
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for parameter in operation.get("parameters", ())
    if parameter["in"] == "query" and "pattern" in parameter["schema"]
}


def _breaks_a_query_pattern(case: Any) -> bool:
    """Whether a query value does not match its parameter's pattern. Schemathesis (4.32) sometimes
    fills a case it labels valid with such a value (".exe" for ?cursor=), which the document does
    not allow: the server's 400 for it is no contract failure."""
    for name, value in (case.query or {}).items():
        pattern = QUERY_PATTERNS.get((case.operation.path, case.method.upper(), name))
        if pattern is not None and isinstance(value, str) and pattern.search(value) is None:
            return True
    return False


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if case.meta is not None and case.meta.generation.mode.is_positive and _breaks_a_query_pattern(case):
        return False
    if case.operation.path != "/api/v1/jobs/{name}/trigger":
        return True
    # A batch trigger with an Idempotency-Key is refused (400: the key is for single triggers, as the
    # document says), and OpenAPI cannot tie a header to a body field.
    headers = {name.lower() for name in (case.headers or {})}
    return not ("idempotency-key" in headers and isinstance(case.body, dict) and "runs" in case.body)
