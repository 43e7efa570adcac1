"""A trigger's `priority`: the run's place among startable runs, instead of its job's priority."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobd.config.groups import MAX_PRIORITY, MIN_PRIORITY
from jobd.errors import BadRequest


def priority_of(body: Mapping[str, Any], *, prefix: str = "", default: int | None = None) -> int | None:
    """The priority `body` asks for, or `default` when it gives none (null is the same as absent).
    Raises BadRequest naming the field."""
    value = body.get("priority")
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer: -5.0 is one
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        field = prefix + "priority"
        raise BadRequest(f"{field} must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}", field=field)
    return value
