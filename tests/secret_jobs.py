"""Python handlers of the secret_env tests."""

from __future__ import annotations

import hashlib
import os
from typing import Any


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def tell(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Shows its secret everywhere a run can show text: log, progress message, result."""
    secret = ctx.secrets["DB_PASSWORD"]
    ctx.log(f"connecting with {secret}")
    ctx.progress(50, f"password {secret} accepted")
    return {"echo": secret, "digest": digest(secret), "in_environ": "DB_PASSWORD" in os.environ}


def refuse(ctx: Any, params: dict[str, Any]) -> None:
    raise RuntimeError(f"login refused for {ctx.secrets['DB_PASSWORD']}")
