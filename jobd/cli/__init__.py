"""The `jobd` command: `serve` and `check` work on a config file; the rest talk to the HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from jobd.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from jobd.cli.follow import ProgressView, follow
from jobd.cli.parser import build_parser

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "ProgressView", "build_parser", "follow", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`jobd check ... | head`): stop quietly. stdout is pointed at
        # /dev/null so that the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
