"""Typed reads from a TOML table that name the key in every error and refuse unknown keys."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, overload

from jobd.config.errors import ConfigError

# Bounds for keys that state none: larger values are typing mistakes, and durations past ~30
# years would overflow the date arithmetic of the scheduler and the store.
MAX_NUMBER = 1e9
MAX_INTEGER = 2**53


class Table:
    """Typed reads from one TOML table, remembering which keys were used."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table, not {type_name(raw)}")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
        self.used.add(name)
        if name not in self.raw:
            return default
        value = self.raw[name]
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: must be {what}, not a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.key(name)}: must be {what}, not {type_name(value)}")
        return value

    @overload
    def string(self, name: str, default: str, *, choices: tuple[str, ...] = ()) -> str: ...

    @overload
    def string(self, name: str, default: None = None, *, choices: tuple[str, ...] = ()) -> str | None: ...

    def string(self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str | None:
        value: str | None = self.get(name, (str,), default, "a string")
        if value is not None:
            self._no_nul(name, value)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    @overload
    def number(self, name: str, default: float, *, minimum: float = ..., maximum: float = ...) -> float: ...

    @overload
    def number(self, name: str, default: None, *, minimum: float = ..., maximum: float = ...) -> float | None: ...

    def number(
        self, name: str, default: float | None, *, minimum: float = 0.0, maximum: float = MAX_NUMBER
    ) -> float | None:
        value: float | None = self.get(name, (int, float), default, "a number")
        if value is None:
            return None
        if not math.isfinite(value):
            raise ConfigError(f"{self.key(name)}: must be a finite number, not {value}")
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: {value} is below the minimum {minimum:g}")
        if value > maximum:
            raise ConfigError(f"{self.key(name)}: {value} is above the maximum {maximum:g}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = MAX_INTEGER) -> int:
        value: int = self.get(name, (int,), default, "an integer")
        if not minimum <= value <= maximum:
            if maximum < MAX_INTEGER:
                bound = f"from {minimum} to {maximum}"
            else:
                bound = f"at least {minimum}" if value < minimum else f"at most {maximum}"
            raise ConfigError(f"{self.key(name)}: {value} is out of range (must be {bound})")
        return int(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, (list,), [], "a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(name)}: must be a list of strings, found {type_name(item)}")
            self._no_nul(name, item)
        return tuple(value)

    def _no_nul(self, name: str, value: str) -> None:
        # No path, argument or environment value can hold one: the run would fail at its start.
        if "\0" in value:
            raise ConfigError(f"{self.key(name)}: must not contain a NUL character")

    def table(self, name: str) -> Table:
        self.used.add(name)
        return Table(self.raw.get(name, {}), self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
