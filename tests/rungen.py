"""Generated run histories, written straight into a store in one transaction (through its writer)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from jobd.models import Counts, Run, RunStatus, TriggerSource
from jobd.store import Store
from jobd.store.migrations import DAY_MS

STATUS_WEIGHTS = {
    RunStatus.PENDING: 2,
    RunStatus.PROCESSING: 2,
    RunStatus.COMPLETED: 60,
    RunStatus.PARTIAL: 8,
    RunStatus.FAILED: 20,
    RunStatus.CANCELLED: 8,
}
SOURCE_WEIGHTS = {
    TriggerSource.CRON: 50,
    TriggerSource.API: 25,
    TriggerSource.MANUAL: 10,
    TriggerSource.RETRY: 10,
    TriggerSource.CATCHUP: 5,
}


def generate_runs(count: int, *, now_ms: int, days: int, jobs: Sequence[str], seed: int = 1) -> list[Run]:
    """`count` runs created at random over the `days` days before now_ms, oldest first.

    Finished runs have durations from a few ms to minutes, with many ties; active ones have none.
    """
    rng = random.Random(seed)
    created = sorted(now_ms - rng.randrange(days * DAY_MS) for _ in range(count))
    statuses, status_weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    sources, source_weights = list(SOURCE_WEIGHTS), list(SOURCE_WEIGHTS.values())
    runs = []
    for at in created:
        status = rng.choices(statuses, status_weights)[0]
        run = Run(
            id=0,
            job=rng.choice(jobs),
            status=status,
            triggered_by=rng.choices(sources, source_weights)[0],
            created_at=at,
            updated_at=at,
        )
        if status is not RunStatus.PENDING:
            run.started_at = at + rng.randrange(0, 2000)
        if status.terminal:
            duration = rng.choice((rng.randrange(0, 50), rng.randrange(0, 5000), rng.randrange(0, 300_000), 1000))
            run.finished_at = run.started_at + duration
            run.progress = 100.0
        if rng.random() < 0.7:
            total = rng.randrange(0, 100)
            failed = rng.randrange(0, 5)
            run.counts = Counts(
                total=total if rng.random() < 0.8 else None,
                success=max(0, total - failed),
                failed=failed,
                skipped=rng.randrange(0, 3),
            )
        runs.append(run)
    return runs


async def insert_runs(store: Store, runs: Sequence[Run]) -> None:
    """Give the runs ids from the store (in order) and write them all in one group commit: the writer
    takes everything handed in before it wakes."""
    for run in runs:
        run.id = store.allocate_run_id()
    await store.write(runs)
