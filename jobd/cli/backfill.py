"""`jobd backfill JOB --from ISO --to ISO [--max-runs N] [--dry-run]`: runs for past fire times.

The daemon computes the fire times from the job it runs (its schedule, time zone and DST rules),
so a dry run asks it too: it lists the times without creating anything.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from jobd.cli.api_commands import _run_client as run_client
from jobd.cli.exit_codes import EXIT_OK, EXIT_USAGE
from jobd.cli.output import emit, print_runs
from jobd.client import JobdClient


def add_parser(client_parser: Callable[[str, str], argparse.ArgumentParser]) -> None:
    backfill = client_parser("backfill", "create runs for a job's past fire times")
    backfill.add_argument("job")
    backfill.add_argument("--from", dest="start", required=True, metavar="ISO", help="first time (inclusive)")
    backfill.add_argument("--to", dest="end", required=True, metavar="ISO", help="end of the range (exclusive)")
    backfill.add_argument("--max-runs", type=int, default=100, metavar="N", help="1-1000 (default %(default)s)")
    backfill.add_argument("--dry-run", action="store_true", help="list the fire times; create nothing")
    backfill.set_defaults(func=cmd_backfill)


def _instant(value: str, option: str) -> str:
    """An ISO time as the API takes it: with an offset, UTC when none is given (as `check --from`)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option} {value!r} is not an ISO 8601 time") from None
    if when.utcoffset() is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def cmd_backfill(args: argparse.Namespace) -> int:
    try:
        body = {
            "from": _instant(args.start, "--from"),
            "to": _instant(args.end, "--to"),
            "max_runs": args.max_runs,
            "dry_run": args.dry_run,
        }
    except ValueError as exc:
        print(f"jobd: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def action(client: JobdClient) -> int:
        path = f"/api/v1/jobs/{urllib.parse.quote(args.job, safe='')}/backfill"
        answer = cast("dict[str, Any]", await client.request("POST", path, json_body=body))

        def human() -> None:
            times = answer["fire_times_local"]
            excluded = answer.get("excluded", [])
            if answer["dry_run"]:
                left_out = f", {len(excluded)} excluded" if excluded else ""
                print(f"{answer['job']}: {len(times)} fire time(s) in {answer['timezone']}{left_out}")
                marked = [(local, "") for local in times]
                marked += [(item["at_local"], f"  excluded ({item['excluded_by']})") for item in excluded]
                # Local times with offsets sort as instants only when compared as such.
                for local, mark in sorted(marked, key=lambda pair: datetime.fromisoformat(pair[0])):
                    print(f"  {local}{mark}")
                return
            made, existing = answer["runs"], answer["existing"]
            print(f"{answer['job']}: {len(made)} run(s) created, {len(existing)} fire time(s) already had one")
            if made:
                print_runs(made)

        emit(args, answer, human)
        return EXIT_OK

    return run_client(args, action)
