"""The commands that talk to a running daemon through its HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

import aiohttp

from jobd.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from jobd.cli.follow import follow
from jobd.cli.output import emit, print_nodes, print_runs, table
from jobd.cli.typed_params import ParamsRefused, check_lines, typed_params
from jobd.client import ApiError, JobdClient
from jobd.models import loads_standard


def _run_client(args: argparse.Namespace, action: Callable[[JobdClient], Awaitable[int]]) -> int:
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


def _timing(at: str | None, delay: str | None) -> dict[str, Any]:
    """`--at` / `--delay` as the trigger body's run_at / delay_s, checked before anything is sent
    (the server still checks the upper bound)."""
    if at is not None and delay is not None:
        raise ValueError("give either --at or --delay, not both")
    if at is not None:
        try:
            when = datetime.fromisoformat(at.strip().upper())
        except ValueError:
            raise ValueError(f"--at {at!r} is not an ISO-8601 time (e.g. 2026-12-24T18:00:00Z)") from None
        if when.tzinfo is None:
            raise ValueError(f"--at {at!r} has no time zone: add Z or an offset such as +01:00")
        return {"run_at": at.strip()}
    if delay is not None:
        try:
            seconds = float(delay)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"--delay {delay!r} is not a number of seconds >= 0")
        return {"delay_s": int(seconds) if seconds.is_integer() else seconds}
    return {}


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
        timing = _timing(args.at, args.delay)
        if args.priority is not None:
            timing["priority"] = args.priority
        batch = _read_params_lines(sys.stdin) if args.stdin else None
    except ValueError as exc:  # one line, as for any usage error
        print(f"jobd: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def action(client: JobdClient) -> int:
        nonlocal params
        try:
            if batch is not None:
                await check_lines(client, args.job, batch)
            elif args.param:  # without -p there is nothing to read as a type: the server checks
                params = await typed_params(client, args.job, args.param, params)
        except ParamsRefused as exc:  # nothing was sent
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        if batch is not None:
            runs = await client.trigger_batched(
                args.job,
                batch,
                batch_size=args.batch_size,
                triggered_by="manual",
                overlap=args.overlap,
                **timing,
            )
            emit(args, {"runs": runs}, lambda: print_runs(runs))
            return EXIT_OK
        run = await client.trigger(
            args.job,
            params,
            idempotency_key=args.idempotency_key,
            overlap=args.overlap,
            triggered_by="manual",
            **timing,
        )
        if args.wait:
            return await follow(client, run["id"], json_lines=args.json)
        until = f" until {run['run_after']}" if run.get("run_after") else ""
        emit(args, {"run": run}, lambda: print(f"run {run['id']} of {run['job']}: {run['status']}{until}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_watch(args: argparse.Namespace) -> int:
    return _run_client(args, lambda client: follow(client, args.run_id, json_lines=args.json))


def cmd_runs(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        page = await client.runs(job=args.job, status=args.status, triggered_by=args.triggered_by, limit=args.limit)
        emit(args, page, lambda: print_runs(page["runs"], total=page["pagination"]["total"]))
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
                "priority",
                "parent_run_id",
                "children",
            ):
                value = run.get(key)
                # JSON values as JSON (null, "quotes"), not as Python writes them.
                shown = "-" if value is None else value if isinstance(value, str) else json.dumps(value)
                print(f"{key:>13}: {shown}")
            if run.get("log_tail"):
                print("\n" + run["log_tail"].rstrip("\n"))

        emit(args, {"run": run}, human)
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
        emit(args, {"run": run}, lambda: print(f"run {run['id']} of {run['job']}: {run['status']}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_job_action(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        job = await getattr(client, args.action)(args.job)
        emit(args, {"job": job}, lambda: print(f"{job['name']}: {'paused' if job['paused'] else 'active'}"))
        return EXIT_OK

    return _run_client(args, action)


def cmd_status(args: argparse.Namespace) -> int:
    async def action(client: JobdClient) -> int:
        queue, jobs, nodes = await asyncio.gather(client.queue(), client.jobs(), _cluster_nodes(client))

        def human() -> None:
            w = queue["workers"]
            age = queue["oldest_pending_age_s"]
            waiting = (
                f"{queue['pending']} pending, oldest pending {age}s"
                if queue["pending"] and age is not None
                else "none pending"
            )
            print(f"workers {w['busy']}/{w['total']} busy, {waiting}")
            for g in queue.get("groups", []):  # shared concurrency groups, when there are any
                print(f"group {g['name']}: {g['running']}/{g['limit']} running, {g['waiting']} waiting")
            if nodes is not None:
                print_nodes(nodes)
                print()
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
            table(["JOB", "SCHEDULE", "STATE", "NEXT RUN", "LAST", "FAILS"], rows)

        snapshot: dict[str, Any] = {"queue": queue, "jobs": jobs}
        if nodes is not None:
            snapshot["nodes"] = nodes
        emit(args, snapshot, human)
        return EXIT_OK

    return _run_client(args, action)


async def _cluster_nodes(client: JobdClient) -> list[dict[str, Any]] | None:
    """The cluster's nodes; None for a single node (or a daemon too old to list them)."""
    try:
        answer = await client.request("GET", "/api/v1/nodes")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    if not isinstance(answer, dict) or not answer.get("cluster"):
        return None
    nodes: list[dict[str, Any]] = answer["nodes"]
    return nodes
