"""Figures, their targets, the table and results.json."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the ceil(pct/100 · n)-th smallest value."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    op: str  # ">=" or "<="
    value: float

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value


def at_least(value: float) -> Target:
    return Target(">=", value)


def at_most(value: float) -> Target:
    return Target("<=", value)


@dataclasses.dataclass(slots=True)
class Figure:
    """One measured figure. `samples` has one value per repetition; `value` is their median."""

    key: str
    label: str
    unit: str
    samples: list[float]
    target: Target | None = None
    scenario: str = ""
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.samples)

    def verdict(self, quick: bool) -> str:
        if self.target is None:
            return ""
        if quick:
            return "(quick)"
        return "met" if self.target.met(self.value) else "MISSED"

    def to_json(self, quick: bool) -> dict[str, Any]:
        return {
            "key": self.key,
            "scenario": self.scenario,
            "label": self.label,
            "unit": self.unit,
            "value": self.value,
            "samples": self.samples,
            "target": None if self.target is None else {"op": self.target.op, "value": self.target.value},
            "verdict": self.verdict(quick) or None,
            "notes": self.notes,
        }


def merge(repeats: Sequence[Sequence[Figure]]) -> list[Figure]:
    """The figures of several repetitions of a scenario: samples pooled per key, notes of the last."""
    merged: dict[str, Figure] = {}
    for figures in repeats:
        for figure in figures:
            if figure.key in merged:
                merged[figure.key].samples.extend(figure.samples)
                merged[figure.key].notes = figure.notes
            else:
                merged[figure.key] = dataclasses.replace(figure, samples=list(figure.samples))
    return list(merged.values())


def format_number(value: float, unit: str) -> str:
    if unit in ("runs/s", "streams", "fires", "requests"):
        text = f"{value:,.0f}"
    elif unit == "%":
        text = f"{value:.2f}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def format_target(target: Target | None, unit: str) -> str:
    if target is None:
        return ""
    sign = "≥" if target.op == ">=" else "≤"
    return f"{sign} {format_number(target.value, unit)}"


def table(figures: Sequence[Figure], *, quick: bool) -> str:
    rows = [("figure", "measured", "target", "")]
    for figure in figures:
        measured = format_number(figure.value, figure.unit)
        if len(figure.samples) > 1:
            measured += f" (±{spread(figure):.0f}%)"
        rows.append((figure.label, measured, format_target(figure.target, figure.unit), figure.verdict(quick)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width) if i < 3 else cell
                for i, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(figures: Sequence[Figure], *, quick: bool) -> str:
    """The table as Markdown rows (for docs/performance.md), with the range of the samples when repeated."""
    rows = ["| figure | measured | target | |", "|---|---|---|---|"]
    for figure in figures:
        measured = format_number(figure.value, figure.unit)
        if len(figure.samples) > 1:
            low, high = min(figure.samples), max(figure.samples)
            measured += f" ({format_number(low, figure.unit).split()[0]}–{format_number(high, figure.unit).split()[0]})"
        rows.append(
            f"| {figure.label} | {measured} | {format_target(figure.target, figure.unit)} | {figure.verdict(quick)} |"
        )
    return "\n".join(rows)


def spread(figure: Figure) -> float:
    """Half the range of the samples, in % of their median: how noisy the figure was."""
    median = figure.value
    if not median:
        return 0.0
    return (max(figure.samples) - min(figure.samples)) / 2 / abs(median) * 100


def write_json(
    path: Path, machine: dict[str, Any], figures: Sequence[Figure], *, quick: bool, extra: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "mode": "quick" if quick else "full",
        **extra,
        "figures": [figure.to_json(quick) for figure in figures],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
