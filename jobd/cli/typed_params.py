"""`jobd trigger`'s check of params against the job's schema, before anything is sent.

The schema is the job's `params_schema` from the API (null for a job that declares none, or from
a daemon older than typed parameters: then nothing is checked here). A `-p K=V` value is text;
it is read as the parameter's declared type (`-p limit=5` sends 5), while `K:=JSON` is sent as
written. The check is the server's own (jobd.config.paramcheck), so the messages are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobd.client import JobdClient
from jobd.config.paramcheck import coerce, validate


class ParamsRefused(ValueError):
    """The params do not fit the job's schema; the message has one line per problem."""


async def typed_params(client: JobdClient, job: str, pairs: Sequence[str], params: dict[str, Any]) -> dict[str, Any]:
    """`params` with each `K=V` value read as its parameter's type, once they fit the schema."""
    schema = (await client.job(job)).get("params_schema")
    if not schema:
        return params
    properties = schema.get("properties", {})
    texts = {key for key, _, _ in (pair.partition("=") for pair in pairs) if not key.endswith(":")}
    typed = {key: coerce(properties.get(key), value) if key in texts else value for key, value in params.items()}
    check_batch(schema, [typed], lambda index: "")
    return typed


def check_batch(schema: dict[str, Any], batch: Sequence[dict[str, Any]], where: Any) -> None:
    """Raise ParamsRefused naming each bad parameter (`where(index)` prefixes an item's lines)."""
    lines = []
    for index, params in enumerate(batch):
        filled = {**_defaults(schema), **params}
        _, problems = validate(schema, filled)
        lines += [f"{where(index)}{problem}" for problem in problems]
    if lines:
        raise ParamsRefused("\n".join(f"jobd: {line}" for line in lines))


async def check_lines(client: JobdClient, job: str, batch: Sequence[dict[str, Any]]) -> None:
    """`--stdin`: every line's params checked before the first request."""
    schema = (await client.job(job)).get("params_schema")
    if schema:
        check_batch(schema, batch, lambda index: f"--stdin run {index + 1}: ")


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    return {name: prop["default"] for name, prop in schema.get("properties", {}).items() if "default" in prop}
