"""Where `Daemon` and `serve` were imported from before app.py and server.py: kept for the
modules that still do (the CLI, the web layer's type hints, the bench)."""

from __future__ import annotations

from jobd.app import STOP_SLACK_S, Daemon
from jobd.lifecycle import INTERRUPTED
from jobd.server import raise_open_files_limit, serve, tune_gc

__all__ = ["INTERRUPTED", "STOP_SLACK_S", "Daemon", "raise_open_files_limit", "serve", "tune_gc"]
