"""Python handlers of the typed-parameter tests."""

from __future__ import annotations

import hashlib
from typing import Any


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def tell(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Shows its secret everywhere a run can show text: log, progress message, result."""
    token = params.get("token", "")
    ctx.log(f"connecting with {token}")
    ctx.progress(50, f"token {token} accepted")
    return {"types": {k: type(v).__name__ for k, v in params.items()}, "digest": digest(token), "echo": token}


async def leak_in_error(ctx: Any, params: dict[str, Any]) -> None:
    raise RuntimeError(f"login refused for {params['token']}")
