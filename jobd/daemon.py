"""Where `Daemon` and `serve` were imported from before app.py and server.py: kept for the
modules that still do (the CLI, the web layer's type hints, the bench)."""

from __future__ import annotations

from typing import Any

from jobd.app import STOP_SLACK_S, Daemon
from jobd.config import Config
from jobd.lifecycle import INTERRUPTED
from jobd.server import raise_open_files_limit, tune_gc


async def serve(config: Config, *, log: Any = None) -> int:
    """jobd.server.serve with the web layer's app (what `jobd serve` runs)."""
    from jobd import server
    from jobd.web import create_app

    return await server.serve(config, make_app=create_app, log=log)


__all__ = ["INTERRUPTED", "STOP_SLACK_S", "Daemon", "raise_open_files_limit", "serve", "tune_gc"]
