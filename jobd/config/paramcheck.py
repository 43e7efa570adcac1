"""Validating a run's params against its job's JSON Schema, and reading typed values from text.

The schemas are those jobd.config.params makes: an object whose properties each use only `type`,
`enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems` and `pattern`
(annotations such as `description`, `default`, `writeOnly` are not checked). This small validator
knows exactly those keywords, so that every message can name the parameter and say what it
must be in words (`params.limit: must be an integer ≥ 1`), and so that the server and the
`jobd trigger` command (which reads the schema from the API) say the same thing. Messages never
repeat the value that was sent: it may be a secret.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

Schema = dict[str, Any]
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "an array",
    "object": "an object",
}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclasses.dataclass(frozen=True, slots=True)
class ParamProblem:
    param: str
    message: str

    def __str__(self) -> str:
        return f"params.{self.param}: {self.message}"

    def as_json(self) -> dict[str, str]:
        return {"param": self.param, "message": self.message}


def validate(schema: Schema, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[ParamProblem]]:
    """Check `params` (defaults already filled) against a job's schema. Returns the params with
    integral numbers of integer parameters made ints (JSON Schema counts 5.0 as an integer), and
    the problems, in the order of the schema's properties, then unknown names."""
    properties: Mapping[str, Schema] = schema.get("properties", {})
    problems: list[ParamProblem] = []
    checked = dict(params)
    for name, prop in properties.items():
        if name not in params:
            if name in schema.get("required", ()):
                problems.append(ParamProblem(name, "required"))
            continue
        problem = check_value(prop, params[name])
        if problem is not None:
            problems.append(ParamProblem(name, problem))
        elif prop.get("type") == "integer" and isinstance(params[name], float):
            checked[name] = int(params[name])
    if schema.get("additionalProperties") is False:
        expected = ", ".join(properties) or "none"
        for name in params:
            if name not in properties:
                problems.append(ParamProblem(name, f"unknown parameter (expected {expected})"))
    return checked, problems


def check_value(prop: Schema, value: Any) -> str | None:
    """None when `value` fits one property's schema, else what it must be, in words."""
    kind = prop.get("type")
    if kind is not None and not _is(kind, value):
        return "must be " + describe(prop)
    if "enum" in prop and not any(_same(value, choice) for choice in prop["enum"]):
        return "must be one of " + ", ".join(json.dumps(choice, ensure_ascii=False) for choice in prop["enum"])
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (("minimum" in prop and value < prop["minimum"]) or ("maximum" in prop and value > prop["maximum"])):
        return "must be " + describe(prop)
    size = len(value) if isinstance(value, (str, list)) else None
    if size is not None:
        low, high = ("minLength", "maxLength") if isinstance(value, str) else ("minItems", "maxItems")
        if (low in prop and size < prop[low]) or (high in prop and size > prop[high]):
            return "must be " + describe(prop)
    if isinstance(value, str) and "pattern" in prop and re.search(prop["pattern"], value) is None:
        return f"must match the pattern {prop['pattern']}"
    return None


def describe(prop: Schema) -> str:
    """What a property's values are, in words: "an integer ≥ 1 and ≤ 10", "a string of 3 to 8 characters"."""
    kind = prop.get("type")
    if kind is None:
        return "one of " + ", ".join(json.dumps(choice, ensure_ascii=False) for choice in prop.get("enum", ()))
    words = _TYPE_WORDS.get(str(kind), str(kind))
    if kind in ("integer", "number"):
        bounds = [f"≥ {prop['minimum']}"] if "minimum" in prop else []
        bounds += [f"≤ {prop['maximum']}"] if "maximum" in prop else []
        return " and ".join([words + (" " + bounds[0] if bounds else ""), *bounds[1:]])
    unit, low, high = (
        ("characters", "minLength", "maxLength") if kind == "string" else ("items", "minItems", "maxItems")
    )
    if kind in ("string", "array") and (low in prop or high in prop):
        if low in prop and high in prop:
            return f"{words} of {prop[low]} to {prop[high]} {unit}"
        return f"{words} of at least {prop[low]} {unit}" if low in prop else f"{words} of at most {prop[high]} {unit}"
    return words


def coerce(prop: Schema | None, text: str) -> Any:
    """A value typed on a command line (`-p name=value`) as the property's type asks; the text
    as it is where it cannot be read so (validation then says what is wrong)."""
    if prop is None:
        return text
    kind = prop.get("type")
    try:
        if kind == "integer" and re.fullmatch(r"[+-]?[0-9]{1,30}", text.strip()):
            return int(text)
        if kind == "number":
            number = float(text)
            if not math.isfinite(number):
                return text
            return int(number) if re.fullmatch(r"[+-]?[0-9]{1,30}", text.strip()) else number
        if kind == "boolean" and text.strip().lower() in (*_TRUE, *_FALSE):
            return text.strip().lower() in _TRUE
        if kind in ("array", "object"):
            return json.loads(text)
        if kind is None:  # an enum of any values: the one whose text this is
            for choice in prop.get("enum", ()):
                if text == (choice if isinstance(choice, str) else json.dumps(choice)):
                    return choice
    except ValueError:
        pass
    return text


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or isinstance(value, int) or value.is_integer()


def _same(value: Any, choice: Any) -> bool:
    """JSON equality: 1 and 1.0 are the same number, true is not 1."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool) and value == choice
    if isinstance(value, (int, float)) != isinstance(choice, (int, float)):
        return False
    return bool(value == choice)
