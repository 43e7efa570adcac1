"""The answer of GET /api/v1/stats, built from the store's RunStats for a period of UTC days.

The period is the last `days` whole UTC days, today included, so the timeline has exactly `days`
entries (days without runs are zeros). "Completed" in the timeline and in the success rate means
COMPLETED or PARTIAL; the success rate is completed / (completed + FAILED), null without either:
a cancelled run is neither a success nor a failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jobd.models import DAY_MS, RunStatus, iso_ms
from jobd.store.base import JobStats, RunStats

MAX_DAYS = 366


def period(now_ms: int, days: int) -> tuple[int, int]:
    """The first and last UTC day numbers (epoch ms // DAY_MS) of the last `days` days."""
    today = now_ms // DAY_MS
    return today - days + 1, today


def day_date(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC).date().isoformat()


def success_rate(by_status: dict[RunStatus, int]) -> float | None:
    ok = by_status[RunStatus.COMPLETED] + by_status[RunStatus.PARTIAL]
    decided = ok + by_status[RunStatus.FAILED]
    return round(ok / decided, 4) if decided else None


def average_ms(timed: int, duration_sum_ms: int) -> float | None:
    return round(duration_sum_ms / timed, 1) if timed else None


_STATUS_NAMES = [(status, status.value) for status in RunStatus]  # iterating the enum costs, per job


def _statuses(by_status: dict[RunStatus, int]) -> dict[str, int]:
    return {name: by_status[status] for status, name in _STATUS_NAMES}


def job_stats_json(name: str, stats: JobStats) -> dict[str, Any]:
    return {
        "job": name,
        "total": stats.total,
        "by_status": _statuses(stats.by_status),
        "success_rate": success_rate(stats.by_status),
        "average_duration_ms": average_ms(stats.timed, stats.duration_sum_ms),
        "p95_duration_ms": stats.p95_ms,
    }


def stats_json(stats: RunStats, *, job: str | None, jobs: Iterable[str] = ()) -> dict[str, Any]:
    """The answer; `jobs` (the configured ones) appear in the breakdown even without runs."""
    answer: dict[str, Any] = {
        "job": job,
        "days": stats.last_day - stats.first_day + 1,
        "since": iso_ms(stats.first_day * DAY_MS),
        "until": iso_ms((stats.last_day + 1) * DAY_MS),
        "total": stats.total,
        "by_status": _statuses(stats.by_status),
        "success_rate": success_rate(stats.by_status),
        "average_duration_ms": average_ms(stats.timed, stats.duration_sum_ms),
        "p95_duration_ms": stats.p95_ms,
        "by_trigger": {source.value: n for source, n in stats.by_trigger.items()},
        "timeline": [
            dict(zip(("date", "total", "completed", "failed"), (day_date(day), *stats.days.get(day, (0, 0, 0)))))
            for day in range(stats.first_day, stats.last_day + 1)
        ],
    }
    if job is None:
        breakdown = dict(stats.jobs)
        for name in jobs:
            breakdown.setdefault(name, JobStats({status: 0 for status in RunStatus}))
        answer["jobs"] = [job_stats_json(name, breakdown[name]) for name in sorted(breakdown)]
    return answer
