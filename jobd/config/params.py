"""A job's typed parameters: `[jobs.NAME.params.PARAM]` tables, and the JSON Schema made from them.

Each table under `[jobs.NAME.params]` defines one parameter (its `type`, `default`, `required`,
`description`, `enum`, `min`/`max`, `pattern`, `secret`). The definitions give the job a JSON
Schema (draft 2020-12, the few keywords jobd.config.paramcheck validates), the defaults that
every run is created with, and the names of the secret parameters.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from jobd.config.errors import ConfigError
from jobd.config.paramcheck import DIALECT, Schema, check_value
from jobd.config.table import Table, type_name

PARAM_TYPES = ("string", "integer", "number", "boolean", "enum", "array", "object")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
REDACTED = "***"
# What min and max bound, by type: the value itself, or its length.
_BOUNDS = {
    "integer": ("minimum", "maximum"),
    "number": ("minimum", "maximum"),
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
}
_MISSING = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    default: Any = None
    has_default: bool = False
    required: bool = False
    description: str = ""
    enum: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    secret: bool = False

    def schema(self) -> Schema:
        """This parameter's JSON Schema; a secret's default is not shown."""
        schema: Schema = {} if self.type == "enum" else {"type": self.type}
        if self.description:
            schema["description"] = self.description
        if self.enum:
            schema["enum"] = list(self.enum)
        low, high = _BOUNDS.get(self.type, ("", ""))
        if self.min is not None:
            schema[low] = _plain(self.min)
        if self.max is not None:
            schema[high] = _plain(self.max)
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.secret:
            schema["writeOnly"] = True
            schema["format"] = "password"
        elif self.has_default:
            schema["default"] = self.default
        return schema


@dataclasses.dataclass(frozen=True, slots=True)
class Params:
    """A job's parameter definitions (none: the job takes any JSON object, unchecked)."""

    items: tuple[Param, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def secret_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.items if p.secret)

    def json_schema(self) -> Schema | None:
        """The JSON Schema of the job's params object, or None for a job that declares none."""
        if not self.items:
            return None
        return {
            "$schema": DIALECT,
            "type": "object",
            "properties": {p.name: p.schema() for p in self.items},
            "required": [p.name for p in self.items if p.required],
            "additionalProperties": False,
        }

    def with_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` with the default of each parameter it lacks."""
        params = dict(given)
        for p in self.items:
            if p.has_default and p.name not in params:
                params[p.name] = p.default
        return params

    def redact(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` as it may be shown: each secret's value replaced by "***"."""
        secrets = self.secret_names
        if not secrets or secrets.isdisjoint(params):
            return dict(params)
        return {key: REDACTED if key in secrets else value for key, value in params.items()}

    def secret_values(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The secret texts of a run's params, longest first (so no shorter one cuts into a longer)."""
        values = {v for k, v in params.items() if k in self.secret_names and isinstance(v, str) and v}
        return tuple(sorted(values, key=len, reverse=True))


def parse_params(t: Table, *, scheduled: bool) -> Params:
    """`[jobs.NAME.params]`: one table per parameter. A scheduled job's required parameters need
    a default, since a cron fire has no params to give."""
    items = []
    for name in list(t.raw):
        if not PARAM_NAME.match(name):
            raise ConfigError(
                f"{t.key(name)}: parameter names use letters, digits, '_', '-' "
                "(at most 64, starting with a letter or '_')"
            )
        items.append(_param(name, t.table(name), scheduled))
    t.done()
    return Params(tuple(items))


def _param(name: str, t: Table, scheduled: bool) -> Param:
    kind = t.string("type")
    if kind is None:
        raise ConfigError(f"{t.key('type')}: required (one of {', '.join(PARAM_TYPES)})")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{t.key('type')}: {kind!r} is not one of {', '.join(PARAM_TYPES)}")
    required = bool(t.get("required", (bool,), False, "true or false"))
    secret = bool(t.get("secret", (bool,), False, "true or false"))
    if secret and kind != "string":
        raise ConfigError(f"{t.key('secret')}: only a string parameter can be secret (this one is {kind})")
    enum = _enum(t, kind)
    low, high = _bound(t, "min", kind), _bound(t, "max", kind)
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{t.key('min')}: {_plain(low)} is above max {_plain(high)}")
    pattern = t.string("pattern")
    if pattern is not None:
        if kind != "string":
            raise ConfigError(f"{t.key('pattern')}: only a string parameter has a pattern (this one is {kind})")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{t.key('pattern')}: {pattern!r} is not a valid regular expression ({exc})") from None
    param = Param(
        name=name,
        type=kind,
        required=required,
        description=t.string("description", ""),
        enum=enum,
        min=low,
        max=high,
        pattern=pattern,
        secret=secret,
    )
    default = t.raw.get("default", _MISSING)
    t.used.add("default")
    t.done()
    if default is not _MISSING:
        if required:
            raise ConfigError(f"{t.key('required')}: a parameter with a default is never missing; drop one of them")
        default = _plain_tree(default)
        problem = check_value(param.schema(), default)
        if problem is not None:
            raise ConfigError(f"{t.key('default')}: does not fit the parameter: {problem}")
        param = dataclasses.replace(param, default=default, has_default=True)
    elif required and scheduled:
        raise ConfigError(
            f"{t.key('required')}: the job has a schedule and a cron fire gives no params: give a default instead"
        )
    return param


def _enum(t: Table, kind: str) -> tuple[Any, ...]:
    values = t.get("enum", (list,), [], "a list")
    if kind == "enum" and not values:
        raise ConfigError(f"{t.key('enum')}: required for a parameter of type enum (the values it may take)")
    if values and kind not in ("enum", "string", "integer", "number"):
        raise ConfigError(f"{t.key('enum')}: not for a parameter of type {kind}")
    for index, value in enumerate(values):
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{t.key('enum')}[{index}]: must be a string, a number or a boolean")
        if kind != "enum":
            problem = check_value({"type": kind}, value)
            if problem is not None:
                raise ConfigError(f"{t.key('enum')}[{index}]: {problem} (the parameter's type is {kind})")
    if len({(type(v), v) for v in values}) != len(values):
        raise ConfigError(f"{t.key('enum')}: the values must be different")
    return tuple(values)


def _bound(t: Table, key: str, kind: str) -> float | None:
    if not t.has(key):
        t.used.add(key)
        return None
    if kind not in _BOUNDS:
        raise ConfigError(f"{t.key(key)}: not for a parameter of type {kind} (only integer, number, string, array)")
    value: float = t.get(key, (int, float), None, "a number")
    if not math.isfinite(value):
        raise ConfigError(f"{t.key(key)}: must be a finite number")
    if kind != "number" and not float(value).is_integer():
        raise ConfigError(f"{t.key(key)}: must be an integer for a parameter of type {kind}, not {type_name(value)}")
    if kind in ("string", "array") and value < 0:
        raise ConfigError(f"{t.key(key)}: a length cannot be negative")
    return value


def _plain(value: float) -> float | int:
    return int(value) if isinstance(value, int) or float(value).is_integer() else value


def _plain_tree(value: Any) -> Any:
    """TOML values as JSON has them (dates and times become ISO strings)."""
    if isinstance(value, dict):
        return {k: _plain_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_tree(v) for v in value]
    if isinstance(value, (str, int, float, bool)):
        return value
    return value.isoformat()  # datetime, date, time
