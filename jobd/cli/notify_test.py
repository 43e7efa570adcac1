"""`jobd notify-test NAME`: the running daemon sends a sample event to one of its notifiers now
(`POST /api/v1/notifiers/{name}/test`), with the config it runs with (secrets stay there)."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Callable
from typing import Any, cast

from jobd.cli.api_commands import _run_client as run_client
from jobd.cli.exit_codes import EXIT_OK
from jobd.cli.output import emit
from jobd.client import JobdClient


def add_parser(client_parser: Callable[[str, str], argparse.ArgumentParser]) -> None:
    test = client_parser("notify-test", "send a sample notification through a notifier of the running daemon")
    test.add_argument("name", help="the notifier ([notifiers.NAME])")
    test.set_defaults(func=cmd_notify_test)


def cmd_notify_test(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        path = f"/api/v1/notifiers/{urllib.parse.quote(args.name, safe='')}/test"
        answer = cast("dict[str, Any]", await client.request("POST", path, json_body={}))
        emit(args, answer, lambda: print(f"{answer['notifier']}: delivered"))
        return EXIT_OK

    return run_client(args, action)
