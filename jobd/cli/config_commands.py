"""`serve` and `check`: the commands that work on a config file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from jobd import cronspec
from jobd.calendars import FireWindow
from jobd.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from jobd.config import Config, ConfigError, load_config
from jobd.config.chains import chains_report, describe_chain
from jobd.runner.confine import host_problems
from jobd.store import StoreError, StoreLocked


def load(path: str, err: TextIO) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"jobd: invalid config: {exc}", file=err)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    from jobd.logs import configure_logging
    from jobd.server import serve
    from jobd.web import create_app

    config = load(args.config, sys.stderr)
    if config is None:
        return EXIT_USAGE
    json_logs = None if args.log_format is None else args.log_format == "json"
    log = configure_logging(level=args.log_level, json=json_logs)
    for warning in config.warnings:
        log.warning("config_warning", problem=warning)
    try:
        return asyncio.run(serve(config, make_app=create_app, log=log))
    except ConfigError as exc:  # found only once serving (a socket systemd passed)
        print(f"jobd: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreLocked as exc:
        print(f"jobd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"jobd: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"jobd: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config, sys.stderr)
    if config is None:
        return EXIT_USAGE
    if not 1 <= args.count <= 1000:
        print("jobd: --count must be from 1 to 1000", file=sys.stderr)
        return EXIT_USAGE
    try:
        start = _parse_instant(args.start) if args.start else datetime.now(UTC)
    except ValueError:
        print(f"jobd: --from: {args.start!r} is not an ISO-8601 time", file=sys.stderr)
        return EXIT_USAGE
    fires: dict[str, list[str]] = {}
    excluded: dict[str, dict[str, str]] = {}  # job → fire time → what excludes it
    for name, job in config.jobs.items():
        if job.schedule:
            spec = cronspec.CronSpec.parse(job.schedule, name)
            try:
                times = spec.next_fires(start, ZoneInfo(job.timezone), args.count)
                fires[name] = [t.isoformat() for t in times]
                excluded[name] = _excluded(job.window, times)
            except (ValueError, OverflowError):  # past the end of the calendar (year 9999)
                print(
                    f"jobd: --from: there are no {args.count} fire times of jobs.{name}.schedule after "
                    f"{start.isoformat()}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
    warnings = [*config.warnings, *host_problems(config)]
    for warning in warnings:
        print(f"jobd: warning: {warning}", file=sys.stderr)
    if args.json:
        report = {
            "ok": True,
            "store": {"backend": config.store.backend, "location": config.store.describe()},
            "warnings": warnings,
            "jobs": {
                name: {
                    "next": times,
                    "excluded": [{"at": at, "excluded_by": why} for at, why in excluded[name].items()],
                }
                for name, times in fires.items()
            },
            "chains": chains_report(config.jobs),
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{args.config}: OK, {len(config.jobs)} job(s)")
    print(f"store: {config.store.backend}, {config.store.describe()}")
    if config.store.url is not None:
        cluster = config.cluster
        where = cluster.advertise_url or "the address the server listens on"
        print(
            f"cluster node: {cluster.node_name} (heartbeat every {cluster.heartbeat_s:g} s, "
            f"dead after {cluster.dead_after_s:g} s), reached by the other nodes at {where}"
        )
    for name, job in config.jobs.items():
        if not job.schedule:
            print(f"\n{name}: no schedule (manual triggers only)")
        else:
            print(f"\n{name}: {job.schedule} ({cronspec.describe(job.schedule, name)}) in {job.timezone}")
            for when in fires[name]:
                why = excluded[name].get(when)
                print(f"  {when}" if why is None else f"  {when}  excluded ({why})")
        for line in describe_chain(job.chain):
            print(f"  {line}")
    return EXIT_OK


def _excluded(window: FireWindow | None, times: list[datetime]) -> dict[str, str]:
    """The fire times (as printed) that the job's calendars or active period leave out, and why."""
    if window is None:
        return {}
    reasons = {t.isoformat(): window.reason(t) for t in times}
    return {at: why for at, why in reasons.items() if why is not None}


def _parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
