"""How client commands print: JSON with --json, else a line or a table for people."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def emit(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        human()


def print_runs(runs: list[dict[str, Any]], total: int | None = None) -> None:
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
    table(["ID", "JOB", "STATUS", "PROGRESS", "TRIGGER", "CREATED", "DURATION", "MESSAGE"], rows)
    if total is not None and total > len(runs):
        print(f"({len(runs)} of {total})")


def print_nodes(nodes: list[dict[str, Any]]) -> None:
    rows = [
        [
            n["name"],
            n["host"],
            str(n["pid"]),
            "yes" if n["alive"] else "no",
            str(n["running"]),
            f"{n['heartbeat_age_s']:.1f}s ago",
        ]
        for n in nodes
    ]
    table(["NODE", "HOST", "PID", "ALIVE", "RUNNING", "HEARTBEAT"], rows)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
