"""Read views of the run table: status totals, each job's last run, the /queue snapshot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from jobd.models import Run, RunStatus
from jobd.store import JobState, Store


class StatusTotals:
    """How many runs the store holds in each status, kept in step with every change."""

    def __init__(self, counts: Mapping[RunStatus, int] | None = None) -> None:
        self._counts: Counter[RunStatus] = Counter(counts or {})

    def __getitem__(self, status: RunStatus) -> int:
        return self._counts.get(status, 0)

    def reset(self, counts: Mapping[RunStatus, int]) -> None:
        self._counts = Counter(counts)

    def created(self, count: int = 1) -> None:
        self._counts[RunStatus.PENDING] += count

    def moved(self, old: RunStatus, new: RunStatus) -> None:
        self._counts[old] -= 1
        self._counts[new] += 1

    def deleted(self, statuses: Iterable[RunStatus]) -> None:
        for status in statuses:
            self._counts[status] -= 1

    def as_json(self) -> dict[str, int]:
        return {status.value: self._counts.get(status, 0) for status in RunStatus}


class LastRuns:
    """The latest run of each job: the newest one, not the one that finished last. Kept in memory
    from a run's creation on; what came before this start is read from the store when first asked
    for, rather than for every job at start."""

    def __init__(self, store: Store, states: Mapping[str, JobState]) -> None:
        self._store = store
        self._states = states
        self.known: dict[str, Run] = {}
        self._read: set[str] = set()  # jobs whose last run before this start has been looked for

    def note(self, run: Run) -> None:
        current = self.known.get(run.job)
        if current is None or current.id <= run.id:
            self.known[run.job] = run

    async def of(self, names: Iterable[str]) -> dict[str, Run]:
        wanted = list(names)
        unread = {}
        for name in wanted:
            state = self._states.get(name)
            known = self.known.get(name)
            if (
                name not in self._read
                and state
                and state.last_run_id
                and (known is None or known.id < state.last_run_id)
            ):
                unread[state.last_run_id] = name
        if unread:
            for run in await self._store.get_runs(list(unread)):
                self.note(run)  # unless one created meanwhile is newer
            self._read.update(unread.values())  # also those whose last run retention deleted
        return {name: self.known[name] for name in wanted if name in self.known}


def queue_snapshot(
    totals: StatusTotals,
    pending: Mapping[int, Run],
    processing: int,
    *,
    workers_total: int,
    now: int,
) -> dict[str, Any]:
    """GET /api/v1/queue. The oldest pending run is among the first few in creation order."""
    oldest = min((run.created_at for run in islice(pending.values(), 64)), default=None)
    return {
        "counts": totals.as_json(),
        "pending": len(pending),
        "processing": processing,
        "workers": {"busy": processing, "total": workers_total},
        "oldest_pending_age_s": None if oldest is None else round((now - oldest) / 1000, 3),
    }


def status_line(job_count: int, pending: int, processing: int, *, stopping: bool) -> str:
    """systemd's STATUS=: a short summary for `systemctl status`."""
    line = f"{job_count} jobs, {pending} pending, {processing} running"
    return f"stopping: {line}" if stopping else line
