"""structlog set-up: JSON lines when not on a terminal, readable lines on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


class _Unfailing:
    """A log stream whose writes never raise: a closed pipe or a restarted journald (EPIPE), a full
    disk, must not turn every request into a 500 or keep the daemon from stopping on SIGTERM."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the file was closed
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


class _ToStructlog(logging.Handler):
    """Lines of the standard logging module (aiohttp refusing bytes that are not HTTP, asyncio)
    go out like jobd's own: one JSON object a line, with the logger's name as `logger`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **extra)
        except Exception:  # a line that cannot be written is dropped, as for jobd's own lines
            pass


def configure_logging(*, level: str = "info", json: bool | None = None, stream: TextIO | None = None) -> Any:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Unfailing(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))  # their info is noise
    return structlog.get_logger("jobd")
