"""The command line: one sub-command per action, each bound to the function that runs it."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable

from jobd import __version__
from jobd.cli import audit, backfill, notify_test
from jobd.cli.api_commands import (
    cmd_job_action,
    cmd_log,
    cmd_run_action,
    cmd_runs,
    cmd_show,
    cmd_status,
    cmd_trigger,
    cmd_watch,
)
from jobd.cli.config_commands import cmd_check, cmd_serve
from jobd.client import DEFAULT_URL


def imported_when_run(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command whose module is imported only when it runs: the PostgreSQL driver would
    otherwise slow down the start of every other command."""

    def command(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobd", description="A single-process job daemon.")
    parser.add_argument("--version", action="version", version=f"jobd {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("-c", "--config", required=True, help="TOML config file")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "console"], help="default: console on a terminal, else json")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config file and show upcoming fire times")
    check.add_argument("-c", "--config", required=True)
    check.add_argument("--from", dest="start", help="ISO-8601 instant to start from (default: now)")
    check.add_argument("--count", type=int, default=5, help="fire times per job (default 5)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    migrate = sub.add_parser("migrate", help="bring a PostgreSQL store's schema up to date")
    migrate.add_argument("-c", "--config", required=True)
    migrate.set_defaults(func=imported_when_run("jobd.cli.store_commands", "cmd_migrate"))

    copy = sub.add_parser("copy-store", help="move a single node's SQLite history into an empty PostgreSQL store")
    copy.add_argument("--from", dest="source", required=True, metavar="FILE", help="the SQLite store (jobd.db)")
    target = copy.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="URL", help="postgresql://user:password@host:5432/dbname")
    target.add_argument("--to-env", metavar="VAR", help="the environment variable holding that URL")
    copy.set_defaults(func=imported_when_run("jobd.cli.store_commands", "cmd_copy_store"))

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--url", default=os.environ.get("JOBD_URL", DEFAULT_URL), help="default $JOBD_URL or %(default)s"
        )
        p.add_argument("--token", default=os.environ.get("JOBD_TOKEN"), help="default $JOBD_TOKEN")
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    trigger = client_parser("trigger", "start a run of a job")
    trigger.add_argument("job")
    trigger.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="K=V",
        help="a parameter; K:=JSON for a non-string value (repeatable)",
    )
    trigger.add_argument("--stdin", action="store_true", help="read one JSON object of params per line: one run each")
    trigger.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="with --stdin: at most N runs per request (default %(default)s; "
        "fewer if the server's max_batch_runs is lower)",
    )
    trigger.add_argument("--idempotency-key")
    trigger.add_argument("--overlap", choices=["skip", "buffer_one", "queue", "allow", "replace"])
    trigger.add_argument(
        "--at", metavar="ISO", help="start no earlier than then (ISO-8601 with a time zone, e.g. 2026-12-24T18:00:00Z)"
    )
    trigger.add_argument("--delay", metavar="SECONDS", help="start no earlier than SECONDS from now")
    trigger.add_argument(
        "--priority", type=int, metavar="N", help="the run's priority instead of its job's (higher starts first)"
    )
    trigger.add_argument(
        "--wait",
        action="store_true",
        help="follow the run until it ends; exit 0 COMPLETED/PARTIAL, 1 FAILED, 2 CANCELLED",
    )
    trigger.set_defaults(func=cmd_trigger)

    watch = client_parser("watch", "follow a run live until it ends (exit code as trigger --wait)")
    watch.add_argument("run_id", type=int)
    watch.set_defaults(func=cmd_watch)

    runs = client_parser("runs", "list runs")
    runs.add_argument("--job")
    runs.add_argument("--status")
    runs.add_argument("--triggered-by")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    show = client_parser("show", "show one run")
    show.add_argument("run_id", type=int)
    show.set_defaults(func=cmd_show)

    log = client_parser("log", "print a run's whole log")
    log.add_argument("run_id", type=int)
    log.set_defaults(func=cmd_log)

    for name, help_text in (("cancel", "cancel a run"), ("retry", "retry a finished run")):
        p = client_parser(name, help_text)
        p.add_argument("run_id", type=int)
        p.set_defaults(func=cmd_run_action, action=name)

    for name, help_text in (("pause", "pause a job's schedule"), ("resume", "resume a job's schedule")):
        p = client_parser(name, help_text)
        p.add_argument("job")
        p.set_defaults(func=cmd_job_action, action=name)

    status = client_parser("status", "jobs, queue and workers at a glance")
    status.set_defaults(func=cmd_status)

    backfill.add_parser(client_parser)
    notify_test.add_parser(client_parser)
    audit.add_parser(client_parser)
    return parser
