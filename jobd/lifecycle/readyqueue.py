"""The ready queue: PENDING runs in the order they were accepted, each job held to its slots.

A slot is reserved when a run is put on the queue and freed when the worker is done with it, so
a worker never takes a run it cannot start. Runs over their job's limit wait, in order, in a
per-job line; runs with a `run_after` (retries) wait out their backoff on a timer first.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from jobd.models import Run, RunStatus


class ReadyQueue:
    def __init__(
        self,
        *,
        limit_of: Callable[[str], int | None],
        clock: Callable[[], int],
        orphaned: Callable[[Run], None],
    ) -> None:
        """`limit_of(job)`: the job's slots, None for a job no longer configured, whose runs are
        handed to `orphaned` instead of waiting for ever."""
        self._limit_of = limit_of
        self.clock = clock
        self._orphaned = orphaned
        self._queue: asyncio.Queue[Run] = asyncio.Queue()
        self._used: Counter[str] = Counter()
        self._waiting: dict[str, deque[Run]] = defaultdict(deque)
        self._timers: dict[int, tuple[Run, asyncio.TimerHandle]] = {}

    def put(self, run: Run) -> None:
        """Put a PENDING run on its way: wait out run_after, then a slot, then the queue."""
        delay_ms = (run.run_after or 0) - self.clock()
        if delay_ms > 0:
            timer = asyncio.get_running_loop().call_later(delay_ms / 1000, self._timer_fired, run)
            self._timers[run.id] = (run, timer)
            return
        limit = self._limit_of(run.job)
        if limit is None:
            self._orphaned(run)
            return
        if self._used[run.job] >= limit:
            self._waiting[run.job].append(run)
            return
        self._used[run.job] += 1
        self._queue.put_nowait(run)

    async def get(self) -> Run:
        """The next run with a slot reserved for it; `release()` frees the slot."""
        return await self._queue.get()

    def release(self, job: str) -> None:
        """A run of `job` left its worker: its slot goes to the next one waiting, if any."""
        self._used[job] -= 1
        if self._used[job] <= 0:
            del self._used[job]
        self.admit_waiting(job)

    def admit_waiting(self, job: str) -> None:
        """Move runs waiting in the job's line to the queue while it has free slots."""
        waiting = self._waiting.get(job)
        while waiting:
            limit = self._limit_of(job)
            if limit is not None and self._used[job] >= limit:
                break
            run = waiting.popleft()
            if run.status is RunStatus.PENDING:
                self.put(run)
        if waiting is not None and not waiting:
            self._waiting.pop(job, None)

    def readmit_all(self) -> None:
        """The limits changed (a reload): runs waiting for a slot move up where there is room."""
        for job in list(self._waiting):
            self.admit_waiting(job)

    def withdraw(self, run: Run) -> None:
        """A run that will not start (it ended while it waited): off its timer and its job's line."""
        entry = self._timers.pop(run.id, None)
        if entry is not None:
            entry[1].cancel()
        waiting = self._waiting.get(run.job)
        if waiting:
            # By identity: Run's dataclass equality compares every field, and a job's line can be long.
            for index, queued in enumerate(waiting):
                if queued is run:
                    del waiting[index]
                    break

    def withdraw_timed(self, pred: Callable[[Run], bool]) -> list[Run]:
        """Take the runs waiting on a timer that match `pred` off it; returns them."""
        taken = [run for run, _ in self._timers.values() if pred(run)]
        for run in taken:
            self.withdraw(run)
        return taken

    def _timer_fired(self, run: Run) -> None:
        self._timers.pop(run.id, None)
        if run.status is RunStatus.PENDING:
            if (run.run_after or 0) > self.clock():  # the loop's timer ran ahead of the wall clock
                self.put(run)
                return
            run.run_after = None
            self.put(run)
