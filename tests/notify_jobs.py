"""Python handlers of the notification tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


async def flag(ctx: Any, params: dict[str, Any]) -> str:
    """Fails while the file params["path"] is missing."""
    if not Path(params["path"]).exists():
        raise ValueError("no flag yet")
    return "flag found"
