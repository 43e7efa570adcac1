"""The ready queue: PENDING runs, taken by the workers in order of effective priority (see
groups.py), each job held to its slots and each shared group to its own.

Each job has a line (a heap by order key); the jobs whose line head could start are in a heap by
that head. A worker takes the best head whose job and every group of it have a free slot, and
the slots of all of them are taken together at that moment: a run never holds one slot while it
waits for another, so overlapping groups cannot deadlock. A job whose group is full waits, parked
on that group, until a run of the group leaves its worker. Runs with a `run_after` (retries,
`run_at`) wait out their time on a timer first.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from jobd.lifecycle.groups import order_key, ready_at
from jobd.models import Run, RunStatus


def _no_groups(job: str) -> tuple[str, ...]:
    return ()


def _no_limit(group: str) -> int | None:
    return None


class ReadyQueue:
    def __init__(
        self,
        *,
        limit_of: Callable[[str], int | None],
        clock: Callable[[], int],
        orphaned: Callable[[Run], None],
        groups_of: Callable[[str], tuple[str, ...]] = _no_groups,
        group_limit_of: Callable[[str], int | None] = _no_limit,
        aging_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        """`limit_of(job)`: the job's slots, None for a job no longer configured, whose runs are
        handed to `orphaned` instead of waiting for ever. `groups_of(job)`: the groups whose
        slots a run of the job takes too; `group_limit_of(group)`: their size (None: no limit).
        `aging_ms()`: the waiting time that raises a run's priority by 1 (0: no aging)."""
        self._limit_of = limit_of
        self.clock = clock
        self._orphaned = orphaned
        self._groups_of = groups_of
        self._group_limit_of = group_limit_of
        self._aging_ms = aging_ms
        self._lines: dict[str, list[tuple[int, int, Run]]] = {}
        self._queued: set[int] = set()  # the ids of the runs in a line (a withdrawn one is not)
        self._heads: list[tuple[int, int, str]] = []  # (key, run id, job) of listed line heads
        self._listed: dict[str, int] = {}  # job → the run id its valid entry in _heads is for
        self._parked: dict[str, set[str]] = defaultdict(set)  # group → jobs waiting for it
        self._used: Counter[str] = Counter()
        self._group_used: Counter[str] = Counter()
        self._held: dict[int, tuple[str, ...]] = {}  # run id → the groups its slot holds
        self._held_by_job: dict[str, list[int]] = defaultdict(list)
        self._getters: deque[asyncio.Future[None]] = deque()
        self._timers: dict[int, tuple[Run, asyncio.TimerHandle]] = {}

    def put(self, run: Run) -> None:
        """Put a PENDING run on its way: wait out run_after, then take its place in its job's line."""
        delay_ms = (run.run_after or 0) - self.clock()
        if delay_ms > 0:
            timer = asyncio.get_running_loop().call_later(delay_ms / 1000, self._timer_fired, run)
            self._timers[run.id] = (run, timer)
            return
        self._enter(run, ready_at(run))

    def _enter(self, run: Run, ready_at_ms: int) -> None:
        if self._limit_of(run.job) is None:
            self._orphaned(run)
            return
        key = order_key(run.priority, ready_at_ms, self._aging_ms())
        heapq.heappush(self._lines.setdefault(run.job, []), (key, run.id, run))
        self._queued.add(run.id)
        self._list(run.job)
        self._wake()

    async def get(self) -> Run:
        """The next run with its slots (its job's, its groups') taken; `release()` frees them."""
        while True:
            run = self._take()
            if run is not None:
                if self._heads:
                    self._wake()  # another worker may take the next one
                return run
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                woken = waiter.done() and not waiter.cancelled()
                waiter.cancel()
                if woken:
                    self._wake()  # the wake-up this worker leaves with goes to another
                elif waiter in self._getters:
                    self._getters.remove(waiter)
                raise

    def release(self, job: str, run_id: int | None = None) -> None:
        """A run of `job` left its worker: its slots go to the next ones waiting, if any."""
        self._used[job] -= 1
        if self._used[job] <= 0:
            del self._used[job]
        groups: tuple[str, ...] = ()
        held_ids = self._held_by_job.get(job)
        if held_ids:
            held = run_id if run_id in held_ids else held_ids[0]
            held_ids.remove(held)
            groups = self._held.pop(held, ())
            if not held_ids:
                del self._held_by_job[job]
        for group in groups:
            self._group_used[group] -= 1
            if self._group_used[group] <= 0:
                del self._group_used[group]
            for parked in self._parked.pop(group, ()):
                self._list(parked)
        self._list(job)
        self._wake()

    def readmit_all(self) -> None:
        """The limits changed (a reload): runs of a removed job are handed back, and runs waiting
        for a slot of a job or a group move up where there is room now."""
        for job in list(self._lines):
            if self._limit_of(job) is None:
                line = self._lines.pop(job)
                self._listed.pop(job, None)
                for _, run_id, run in sorted(line):
                    if run_id in self._queued:
                        self._queued.discard(run_id)
                        if run.status is RunStatus.PENDING:
                            self._orphaned(run)
        parked = [job for jobs in self._parked.values() for job in jobs]
        self._parked.clear()
        for job in {*parked, *self._lines}:
            self._list(job)
        self._wake()

    def withdraw(self, run: Run) -> None:
        """A run that will not start (it ended while it waited): off its timer and its job's line."""
        entry = self._timers.pop(run.id, None)
        if entry is not None:
            entry[1].cancel()
        if run.id in self._queued:
            self._queued.discard(run.id)  # its entry is dropped when it reaches the head
            self._list(run.job)

    def withdraw_timed(self, pred: Callable[[Run], bool]) -> list[Run]:
        """Take the runs waiting on a timer that match `pred` off it; returns them."""
        taken = [run for run, _ in self._timers.values() if pred(run)]
        for run in taken:
            self.withdraw(run)
        return taken

    def waiting_count(self) -> int:
        """Runs in the lines: ready, waiting for a worker or for a slot."""
        return len(self._queued)

    # -- the lines ---------------------------------------------------------------------------------

    def _head(self, job: str) -> tuple[int, int, Run] | None:
        """The job's best run still waiting, dropping those withdrawn or ended meanwhile."""
        line = self._lines.get(job)
        while line:
            _, run_id, run = line[0]
            if run_id in self._queued and run.status is RunStatus.PENDING:
                return line[0]
            heapq.heappop(line)
            self._queued.discard(run_id)
        self._lines.pop(job, None)
        return None

    def _job_full(self, job: str) -> bool:
        limit = self._limit_of(job)
        return limit is not None and self._used[job] >= limit

    def _full_group(self, job: str) -> str | None:
        for group in self._groups_of(job):
            limit = self._group_limit_of(group)
            if limit is not None and self._group_used[group] >= limit:
                return group
        return None

    def _list(self, job: str) -> None:
        """Offer the job's line head to the workers, if the job has a free slot."""
        head = self._head(job)
        if head is None or self._job_full(job) or self._listed.get(job) == head[1]:
            return
        self._listed[job] = head[1]
        heapq.heappush(self._heads, (head[0], head[1], job))

    def _take(self) -> Run | None:
        while self._heads:
            _, run_id, job = heapq.heappop(self._heads)
            if self._listed.get(job) != run_id:
                continue  # superseded by a better head, or taken
            del self._listed[job]
            head = self._head(job)
            if head is None:
                continue
            if head[1] != run_id:
                self._list(job)  # the head was withdrawn: offer the next one
                continue
            if self._job_full(job):
                continue  # listed again when one of its runs leaves its worker
            group = self._full_group(job)
            if group is not None:
                self._parked[group].add(job)
                continue
            heapq.heappop(self._lines[job])
            self._queued.discard(run_id)
            run = head[2]
            self._hold(job, run_id)
            self._list(job)
            return run
        return None

    def _hold(self, job: str, run_id: int) -> None:
        self._used[job] += 1
        groups = tuple(g for g in self._groups_of(job) if self._group_limit_of(g) is not None)
        for group in groups:
            self._group_used[group] += 1
        self._held[run_id] = groups
        self._held_by_job[job].append(run_id)

    def _wake(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _timer_fired(self, run: Run) -> None:
        self._timers.pop(run.id, None)
        if run.status is RunStatus.PENDING:
            if (run.run_after or 0) > self.clock():  # the loop's timer ran ahead of the wall clock
                self.put(run)
                return
            at = ready_at(run)
            run.run_after = None
            self._enter(run, at)
