"""`jobd audit [--since ISO] [--by TOKEN_NAME] [--action A,B] [--job J] [--limit N]`: the audit log,
newest first (an admin token's command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, cast

from jobd.cli.api_commands import _run_client as run_client
from jobd.cli.backfill import _instant as instant
from jobd.cli.exit_codes import EXIT_OK, EXIT_USAGE
from jobd.cli.output import emit, table
from jobd.client import JobdClient


def add_parser(client_parser: Callable[[str, str], argparse.ArgumentParser]) -> None:
    audit = client_parser("audit", "who triggered, cancelled, paused ... what, and how it ended")
    audit.add_argument("--since", metavar="ISO", help="records at or after this time (UTC when no offset is given)")
    audit.add_argument("--by", metavar="NAME", help="records of the calls made with this token (its name)")
    audit.add_argument("--action", metavar="A,B", help="trigger, backfill, cancel, retry, pause, resume, ticket, ...")
    audit.add_argument("--job")
    audit.add_argument("--limit", type=int, default=20)
    audit.set_defaults(func=cmd_audit)


def print_records(records: list[dict[str, Any]], total: int) -> None:
    rows = [
        [
            r["at"],
            r["token"] or "-",
            r["remote"] or "-",
            r["action"],
            r["job"] or "-",
            "-" if r["run_id"] is None else str(r["run_id"]),
            str(r["status"]),
            r["outcome"],
            (r["detail"] or "")[:50],
        ]
        for r in records
    ]
    table(["AT", "TOKEN", "REMOTE", "ACTION", "JOB", "RUN", "STATUS", "OUTCOME", "DETAIL"], rows)
    if total > len(records):
        print(f"({len(records)} of {total})")


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        since = None if args.since is None else instant(args.since, "--since")
    except ValueError as exc:
        print(f"jobd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    query = {"since": since, "token": args.by, "action": args.action, "job": args.job, "limit": args.limit}

    async def action(client: JobdClient) -> int:
        page = cast("dict[str, Any]", await client.request("GET", "/api/v1/audit", params=query))
        emit(args, page, lambda: print_records(page["records"], page["pagination"]["total"]))
        return EXIT_OK

    return run_client(args, action)
