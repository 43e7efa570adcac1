"""The runs of this process that have not finished: PENDING and PROCESSING, with their latest
progress, counted per job so that admission and /queue are O(1), not a scan."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping

from jobd.models import Run, RunStatus


class ActiveRuns(Mapping[int, Run]):
    def __init__(self) -> None:
        self._runs: dict[int, Run] = {}
        self._by_job: dict[str, set[int]] = defaultdict(set)
        self.pending: dict[int, Run] = {}  # in creation order
        self._pending_by_job: Counter[str] = Counter()
        self._processing_by_job: Counter[str] = Counter()
        self.processing_count = 0
        # Runs whose terminal state is being committed: a worker must not start them meanwhile.
        self._finishing: set[int] = set()
        self._settled = asyncio.Event()  # set while no terminal state awaits its commit
        self._settled.set()
        self._waiters: dict[int, list[asyncio.Future[None]]] = defaultdict(list)

    def __getitem__(self, run_id: int) -> Run:
        return self._runs[run_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def get(self, run_id: int, default: Run | None = None) -> Run | None:  # type: ignore[override]
        return self._runs.get(run_id, default)

    def pending_of(self, job: str) -> int:
        return self._pending_by_job[job]

    def processing_of(self, job: str) -> int:
        return self._processing_by_job[job]

    def of_job(self, job: str) -> list[Run]:
        return sorted((self._runs[i] for i in self._by_job.get(job, ())), key=lambda r: r.id)

    def add(self, run: Run) -> None:
        self._count(run, +1)
        self._runs[run.id] = run
        self._by_job[run.job].add(run.id)

    def remove(self, run: Run) -> None:
        """The run's terminal state is committed: it leaves the table, and its waiters are woken."""
        self._runs.pop(run.id, None)
        ids = self._by_job.get(run.job)
        if ids is not None:
            ids.discard(run.id)
            if not ids:
                del self._by_job[run.job]
        for waiter in self._waiters.pop(run.id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def withdraw(self, run: Run) -> None:
        """A run whose creation was not committed: as if it had never been added."""
        self._count(run, -1)
        self._runs.pop(run.id, None)
        ids = self._by_job.get(run.job)
        if ids is not None:
            ids.discard(run.id)
            if not ids:
                del self._by_job[run.job]

    def moving(self, run: Run) -> None:
        """Called before the run's status changes (uncounts it); `moved()` after (counts it again)."""
        self._count(run, -1)

    def moved(self, run: Run) -> None:
        self._count(run, +1)

    def _count(self, run: Run, delta: int) -> None:
        if run.status is RunStatus.PENDING:
            self._pending_by_job[run.job] += delta
            if delta > 0:
                self.pending[run.id] = run
            else:
                self.pending.pop(run.id, None)
        elif run.status is RunStatus.PROCESSING:
            self._processing_by_job[run.job] += delta
            self.processing_count += delta

    # -- terminal commits in flight ----------------------------------------------------------------

    def finishing(self, run_id: int) -> bool:
        return run_id in self._finishing

    def begin_finish(self, run_id: int) -> None:
        self._finishing.add(run_id)
        self._settled.clear()

    def end_finish(self, run_id: int) -> None:
        self._finishing.discard(run_id)
        if not self._finishing:
            self._settled.set()

    def startable(self, run: Run) -> bool:
        return run.status is RunStatus.PENDING and run.id not in self._finishing

    async def wait_settled(self) -> None:
        """Until every terminal state handed to the store is committed."""
        await self._settled.wait()

    async def wait_finished(self, run: Run) -> None:
        """Until the run's terminal state is committed (it leaves the table only then)."""
        if run.id not in self._runs:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[run.id].append(waiter)
        try:
            await waiter
        finally:
            # A caller that gave up (a timeout, a client gone) must not leave its waiter until the run ends.
            waiters = self._waiters.get(run.id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[run.id]

    def waiters_of(self, run_id: int) -> int:
        """How many callers wait for the run's end."""
        return len(self._waiters.get(run_id, ()))
