"""The `jobd` command: `serve` and `check` work on a config file; the rest talk to the HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import aiohttp

from jobd import __version__, cronspec
from jobd.client import DEFAULT_URL, TERMINAL_STATUSES, ApiError, JobdClient
from jobd.config import Config, ConfigError, load_config
from jobd.models import loads_standard
from jobd.store import StoreError, StoreLocked

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`jobd check ... | head`): stop quietly. stdout is pointed at
        # /dev/null so that the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


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
    return parser


# -- serve and check -------------------------------------------------------------------------------


def _load(path: str, err: TextIO) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"jobd: invalid config: {exc}", file=err)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    from jobd.daemon import serve
    from jobd.logs import configure_logging

    config = _load(args.config, sys.stderr)
    if config is None:
        return EXIT_USAGE
    json_logs = None if args.log_format is None else args.log_format == "json"
    log = configure_logging(level=args.log_level, json=json_logs)
    try:
        return asyncio.run(serve(config, log=log))
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
    config = _load(args.config, sys.stderr)
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
    for name, job in config.jobs.items():
        if job.schedule:
            spec = cronspec.CronSpec.parse(job.schedule, name)
            try:
                fires[name] = [t.isoformat() for t in spec.next_fires(start, ZoneInfo(job.timezone), args.count)]
            except (ValueError, OverflowError):  # past the end of the calendar (year 9999)
                print(
                    f"jobd: --from: there are no {args.count} fire times of jobs.{name}.schedule after "
                    f"{start.isoformat()}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
    if args.json:
        print(json.dumps({"ok": True, "jobs": {name: {"next": times} for name, times in fires.items()}}, indent=2))
        return EXIT_OK
    print(f"{args.config}: OK, {len(config.jobs)} job(s)")
    for name, job in config.jobs.items():
        if not job.schedule:
            print(f"\n{name}: no schedule (manual triggers only)")
            continue
        print(f"\n{name}: {job.schedule} ({cronspec.describe(job.schedule, name)}) in {job.timezone}")
        for when in fires[name]:
            print(f"  {when}")
    return EXIT_OK


def _parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- client commands -------------------------------------------------------------------------------


def _run_client(args: argparse.Namespace, action: Callable[[JobdClient], Any]) -> int:
    try:
        url = urllib.parse.urlsplit(args.url)
        valid = url.scheme in ("http", "https") and bool(url.hostname) and (url.port or 0) >= 0
    except ValueError:  # an unclosed [IPv6 address; .port: a port out of range
        valid = False
    if not valid:
        print(f"jobd: --url {args.url!r} is not an http:// or https:// address", file=sys.stderr)
        return EXIT_USAGE

    async def go() -> int:
        async with JobdClient(args.url, token=args.token) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        print(f"jobd: {exc.status} {exc.title}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        raise  # our reader went away (`| head`): main() ends quietly
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        print(f"jobd: cannot reach {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.rstrip(":"):
            raise ValueError(f"--param {pair!r}: expected K=V or K:=JSON")
        if key.endswith(":"):
            try:
                params[key[:-1]] = loads_standard(value)  # no NaN or 1e999: the server would refuse them
            except ValueError as exc:
                raise ValueError(f"--param {pair!r}: the value after := is not JSON ({exc})") from None
        else:
            params[key] = value
    return params


def _read_params_lines(lines: TextIO) -> list[dict[str, Any]]:
    """`--stdin`: one JSON object of params per line; blank lines are skipped."""
    batch = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            params = loads_standard(line)
        except ValueError as exc:
            raise ValueError(f"--stdin line {number} is not JSON ({exc})") from None
        if not isinstance(params, dict):
            raise ValueError(f"--stdin line {number} is not a JSON object of params")
        batch.append(params)
    return batch


def cmd_trigger(args: argparse.Namespace) -> int:
    misuse = None
    if args.batch_size < 1:
        misuse = "--batch-size must be at least 1"
    elif args.stdin and args.wait:
        misuse = "--wait follows one run; it cannot be used with --stdin"
    elif args.stdin and args.param:
        misuse = "--param cannot be used with --stdin: each line is a run's params"
    elif args.stdin and args.idempotency_key is not None:
        misuse = "--idempotency-key is for a single run; it cannot be used with --stdin"
    try:
        if misuse is not None:  # said before stdin is read
            raise ValueError(misuse)
        params = _parse_params(args.param)
        batch = _read_params_lines(sys.stdin) if args.stdin else None
    except ValueError as exc:  # one line, as for any usage error
        print(f"jobd: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def action(client: JobdClient) -> int:
        if batch is not None:
            runs = await client.trigger_batched(
                args.job, batch, batch_size=args.batch_size, triggered_by="manual", overlap=args.overlap
            )
            _emit(args, {"runs": runs}, lambda: _print_runs(runs))
            return EXIT_OK
        run = await client.trigger(
            args.job, params, idempotency_key=args.idempotency_key, overlap=args.overlap, triggered_by="manual"
        )
        if args.wait:
            return await follow(client, run["id"], json_lines=args.json)
        _emit(args, {"run": run}, lambda: print(f"run {run['id']} of {run['job']}: {run['status']}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_watch(args: argparse.Namespace) -> int:
    return _run_client(args, lambda client: follow(client, args.run_id, json_lines=args.json))


def cmd_runs(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        page = await client.runs(job=args.job, status=args.status, triggered_by=args.triggered_by, limit=args.limit)
        _emit(args, page, lambda: _print_runs(page["runs"], total=page["pagination"]["total"]))
        return EXIT_OK

    return _run_client(args, action)


def cmd_show(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        run = await client.get_run(args.run_id)

        def human() -> None:
            for key in (
                "id",
                "job",
                "status",
                "progress",
                "message",
                "triggered_by",
                "params",
                "attempt",
                "created_at",
                "started_at",
                "finished_at",
                "duration_ms",
                "counts",
                "result",
                "error",
                "exit_code",
                "retry_of",
            ):
                value = run.get(key)
                # JSON values as JSON (null, "quotes"), not as Python writes them.
                shown = "-" if value is None else value if isinstance(value, str) else json.dumps(value)
                print(f"{key:>13}: {shown}")
            if run.get("log_tail"):
                print("\n" + run["log_tail"].rstrip("\n"))

        _emit(args, {"run": run}, human)
        return EXIT_OK

    return _run_client(args, action)


def cmd_log(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        log = await client.log(args.run_id)
        if args.json:
            print(json.dumps({"run_id": args.run_id, "log": log}, indent=2))
        else:
            sys.stdout.write(log)
        return EXIT_OK

    return _run_client(args, action)


def cmd_run_action(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        run = await getattr(client, args.action)(args.run_id)
        _emit(args, {"run": run}, lambda: print(f"run {run['id']} of {run['job']}: {run['status']}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_job_action(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        job = await getattr(client, args.action)(args.job)
        _emit(args, {"job": job}, lambda: print(f"{job['name']}: {'paused' if job['paused'] else 'active'}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_status(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        queue, jobs = await asyncio.gather(client.queue(), client.jobs())

        def human() -> None:
            w = queue["workers"]
            age = queue["oldest_pending_age_s"]
            waiting = (
                f"{queue['pending']} pending, oldest pending {age}s"
                if queue["pending"] and age is not None
                else "none pending"
            )
            print(f"workers {w['busy']}/{w['total']} busy, {waiting}")
            rows = [
                [
                    j["name"],
                    j["schedule"] or "-",
                    "paused" if j["paused"] else ("running" if j["is_running"] else "idle"),
                    j["next_run_at"] or "-",
                    (j["last_run"] or {}).get("status", "-"),
                    str(j["consecutive_failures"]),
                ]
                for j in jobs
            ]
            _table(["JOB", "SCHEDULE", "STATE", "NEXT RUN", "LAST", "FAILS"], rows)

        _emit(args, {"queue": queue, "jobs": jobs}, human)
        return EXIT_OK

    return _run_client(args, action)


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        human()


def _print_runs(runs: list[dict[str, Any]], total: int | None = None) -> None:
    rows = [
        [
            str(r["id"]),
            r["job"],
            r["status"],
            f"{r['progress']:g}%",
            r["triggered_by"],
            r["created_at"] or "-",
            "-" if r["duration_ms"] is None else f"{r['duration_ms']}ms",
            (r["error"] or r["message"] or "")[:50],
        ]
        for r in runs
    ]
    _table(["ID", "JOB", "STATUS", "PROGRESS", "TRIGGER", "CREATED", "DURATION", "MESSAGE"], rows)
    if total is not None and total > len(runs):
        print(f"({len(runs)} of {total})")


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


# -- following a run live --------------------------------------------------------------------------

STATUS_EXIT = {"COMPLETED": EXIT_OK, "PARTIAL": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": 2}


async def follow(client: JobdClient, run_id: int, *, json_lines: bool = False, out: TextIO | None = None) -> int:
    """Show a run's updates until it ends; the exit code says how it ended."""
    out = out or sys.stdout
    view = ProgressView(out, tty=out.isatty() and not json_lines)
    final: dict[str, Any] | None = None
    # watch() waits out a jobd that cannot be reached (a restart); at the start that is an error.
    await client.get_run(run_id)
    updates = client.watch(run_id)
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
