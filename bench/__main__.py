"""`python -m bench`: run the scenarios, print the table, write the JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe, filesystem, header
from bench.postgres import BenchPostgres
from bench.report import Figure, markdown, merge, table, write_json
from bench.scenarios import Context, registry
from jobd.server import raise_open_files_limit

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    scenarios = registry()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="jobd's benchmark suite (see docs/performance.md).",
        epilog="scenarios: " + "; ".join(f"{name}: {title}" for name, (title, _) in scenarios.items()),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run with reduced counts (its figures are not comparable with the targets)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only this scenario (repeatable, or comma-separated)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each scenario N times and report the median of each figure",
    )
    parser.add_argument("--output", type=Path, help="the JSON file (default bench/results/results[-quick].json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each daemon with py-spy into bench/results/profiles/ and print a summary",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning"],
        help="the daemons' log level (default warning: at info each request and run logs a line)",
    )
    parser.add_argument(
        "--synchronous",
        default="normal",
        choices=["normal", "full"],
        help="the daemons' store.synchronous (default normal, jobd's default)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print the table as Markdown (docs/performance.md's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the daemons' folders (stores, logs) and say where")
    args = parser.parse_args(argv)
    args.only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in scenarios]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(scenarios)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> int:
    scenarios = registry()
    selected = args.only or list(scenarios)
    mode = "quick" if args.quick else "full"
    machine = describe()
    machine["store_filesystem"] = filesystem(workdir)
    settings = f"--log-level {args.log_level}, store.synchronous = {args.synchronous!r}, JSON logs to a file"
    print(header(machine, mode=mode, settings=settings), flush=True)
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    postgres = BenchPostgres()  # started by the first cluster scenario, if any
    try:
        for name in selected:
            title, scenario = scenarios[name]
            print(f"  {name}: {title} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            repeats = []
            for repeat in range(args.repeat):
                try:
                    context = Context(
                        args.quick,
                        workdir / f"{name}-{repeat + 1}",
                        name=name,
                        profile_dir=RESULTS / "profiles" if args.profile else None,
                        log_level=args.log_level,
                        synchronous=args.synchronous,
                        postgres=postgres,
                    )
                    repeats.append(await scenario(context))
                except Exception as exc:  # one broken scenario must not hide the others' figures
                    failures[name] = f"{type(exc).__name__}: {exc}"
                    print(f"  {name} FAILED: {failures[name]}", file=sys.stderr, flush=True)
                    break
            timings[name] = round(time.monotonic() - started, 1)
            for figure in merge(repeats):
                figure.scenario = name
                figures.append(figure)
            print(f"  {name}: {timings[name]} s", file=sys.stderr, flush=True)
        postgresql = postgres.describe()
    finally:
        postgres.close()
    print()
    print(table(figures, quick=args.quick))
    if args.markdown:
        print()
        print(markdown(figures, quick=args.quick))
    for name, reason in failures.items():
        print(f"FAILED {name}: {reason}")
    output = args.output or RESULTS / ("results-quick.json" if args.quick else "results.json")
    write_json(
        output,
        machine,
        figures,
        quick=args.quick,
        extra={
            "repeat": args.repeat,
            "log_level": args.log_level,
            "synchronous": args.synchronous,
            "scenario_seconds": timings,
            "failures": failures,
            "postgresql": postgresql,
        },
    )
    print(f"\nwritten to {output}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit(30_000)
    if args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="jobd-bench-"))
        print(f"daemon folders kept in {workdir}", file=sys.stderr)
        return asyncio.run(run(args, workdir))
    with tempfile.TemporaryDirectory(prefix="jobd-bench-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(main())
