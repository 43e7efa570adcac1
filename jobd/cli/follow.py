"""Following a run live: `trigger --wait` and `watch`."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import AsyncGenerator
from typing import Any, TextIO, cast

from jobd.cli.exit_codes import EXIT_FAILED, EXIT_OK
from jobd.client import TERMINAL_STATUSES, JobdClient

STATUS_EXIT = {"COMPLETED": EXIT_OK, "PARTIAL": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": 2}


async def follow(client: JobdClient, run_id: int, *, json_lines: bool = False, out: TextIO | None = None) -> int:
    """Show a run's updates until it ends; the exit code says how it ended."""
    out = out or sys.stdout
    view = ProgressView(out, tty=out.isatty() and not json_lines)
    final: dict[str, Any] | None = None
    # watch() waits out a jobd that cannot be reached (a restart); at the start that is an error.
    await client.get_run(run_id)
    # watch() is an async generator annotated as an AsyncIterator; aclosing() needs its aclose().
    updates = cast(AsyncGenerator[dict[str, Any], None], client.watch(run_id))
    async with contextlib.aclosing(updates):
        async for update in updates:
            final = update
            if json_lines:
                print(json.dumps(update), file=out, flush=True)
            elif view.tty or update["status"] not in TERMINAL_STATUSES:
                view.show(update)  # piped, the closing line below says how it ended
    assert final is not None
    if not json_lines:
        view.done(final)
    return STATUS_EXIT.get(final["status"], EXIT_FAILED)


class ProgressView:
    """A progress bar redrawn in place on a terminal; one plain line per change otherwise."""

    def __init__(self, out: TextIO, *, tty: bool, bar_width: int = 24) -> None:
        self.out = out
        self.tty = tty
        self.bar_width = bar_width
        self._last: tuple[Any, ...] | None = None

    def show(self, update: dict[str, Any]) -> None:
        key = (update["status"], update["progress"], update["message"])
        if key == self._last:
            return
        self._last = key
        pct = float(update["progress"] or 0)
        message = update["message"] or ""
        head = f"run {update['run_id']} {update['job']} {update['status']}"
        if self.tty:
            filled = round(self.bar_width * pct / 100)
            line = f"{head} [{'#' * filled}{'.' * (self.bar_width - filled)}] {pct:5.1f}% {message}"
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[2K" + line[:width])
            self.out.flush()
        else:
            print(f"{head} {pct:g}%" + (f" {message}" if message else ""), file=self.out, flush=True)

    def done(self, update: dict[str, Any]) -> None:
        if self.tty:
            self.out.write("\n")
        detail = update.get("error") or ""
        print(
            f"run {update['run_id']} {update['job']}: {update['status']}" + (f": {detail}" if detail else ""),
            file=self.out,
            flush=True,
        )
