"""The cluster's active runs as this node knows them: kept from the tailed events, so that the
API, the streams' openings and the queue figures show every node's runs."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobd.lifecycle.transitions import ended_copy as ended_copy  # the cluster writes runs ended by it
from jobd.lifecycle.views import StatusTotals
from jobd.models import Counts, Run, RunStatus
from jobd.store.base import row_to_run
from jobd.store.postgres import events
from jobd.store.postgres.runs import SELECT_RUN, Conn

_ACTIVE = f"SELECT {SELECT_RUN} FROM runs WHERE status IN ('PENDING', 'PROCESSING') ORDER BY id"
_BY_IDS = f"SELECT {SELECT_RUN} FROM runs WHERE id = ANY(%s)"
_COUNTS = "SELECT status, count(*) FROM runs GROUP BY status"


async def load_active(conn: Conn) -> list[Run]:
    cur = await conn.execute(_ACTIVE)
    return [row_to_run(row) for row in await cur.fetchall()]


def decode(event: events.Event) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.data)
    return data


class RunTable:
    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}
        self.totals = StatusTotals()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        # Runs seen ending lately: a creator's put() that comes after the feed told of the end
        # must not bring the run back.
        self._ended: collections.deque[int] = collections.deque(maxlen=10_000)
        self._ended_set: set[int] = set()
        self._fed: dict[int, RunStatus] = {}  # the status the feed last told of each active run

    async def load_totals(self, conn: Conn) -> None:
        cur = await conn.execute(_COUNTS)
        self.totals.reset({RunStatus(status): int(n) for status, n in await cur.fetchall()})

    def loaded(self, run: Run) -> None:
        """An active run read at start: counted as the feed last told of it."""
        self._fed[run.id] = run.status
        self.runs[run.id] = run

    def put(self, run: Run) -> None:
        """A run this node just created or claimed: counted now, not when the feed tells of it."""
        if run.id in self._ended_set:
            return
        before = self._fed.get(run.id)
        if (before is None and run.status is RunStatus.PENDING) or (
            before is RunStatus.PENDING and run.status is RunStatus.PROCESSING
        ):
            self._count(run.id, run.status)
        if not run.status.terminal:
            self.runs[run.id] = run

    def ended(self, run: Run) -> None:
        """A run whose end this node committed."""
        if run.id not in self._ended_set:
            self._count(run.id, run.status)
            self.runs.pop(run.id, None)
            self._forget(run.id)
            self._wake(run.id)

    def _forget(self, run_id: int) -> None:
        if len(self._ended) == self._ended.maxlen:
            self._ended_set.discard(self._ended[0])
        self._ended.append(run_id)
        self._ended_set.add(run_id)

    def count(self, status: RunStatus) -> int:
        return sum(1 for run in self.runs.values() if run.status is status)

    async def apply(
        self,
        batch: Sequence[events.Event],
        data: Sequence[dict[str, Any]],
        connection: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
    ) -> None:
        """The feed's events (`data`: each one's decoded message) applied to the table."""
        # Runs another node created are read from the database, unless this batch also ends them.
        last: dict[int, str] = {}
        for e in batch:
            if e.type == "status_update" and e.run_id is not None and e.status is not None:
                last[e.run_id] = e.status
        unknown = [
            run_id
            for run_id, status in last.items()
            if status in ("PENDING", "PROCESSING") and run_id not in self.runs and run_id not in self._ended_set
        ]
        fetched: dict[int, Run] = {}
        if unknown:
            with contextlib.suppress(Exception):
                async with connection() as conn:
                    cur = await conn.execute(_BY_IDS, (unknown,))
                    fetched = {run.id: run for run in map(row_to_run, await cur.fetchall())}
        for event, message in zip(batch, data):
            if event.type != "status_update" or event.run_id is None or event.status is None:
                continue
            status = RunStatus(event.status)
            if event.run_id in self._ended_set:
                continue
            self._count(event.run_id, status)
            run = self.runs.get(event.run_id)
            if run is None:
                if status.terminal:
                    self._forget(event.run_id)
                    self._wake(event.run_id)
                    continue
                run = fetched.get(event.run_id)
                if run is None:
                    continue
            self._update(run, status, message)
            if status.terminal:
                self.runs.pop(run.id, None)
                self._forget(run.id)
                self._wake(run.id)
            else:
                self.runs[run.id] = run

    def _count(self, run_id: int, status: RunStatus) -> None:
        before = self._fed.get(run_id)
        if before is None:
            if status is RunStatus.PENDING:
                self.totals.created()
            else:  # a run this node began tailing after it started
                self.totals.moved(RunStatus.PROCESSING, status)
        elif before is not status:
            self.totals.moved(before, status)
        if status.terminal:
            self._fed.pop(run_id, None)
        else:
            self._fed[run_id] = status

    def _update(self, run: Run, status: RunStatus, data: dict[str, Any]) -> None:
        run.status = status
        run.progress = data.get("progress", run.progress)
        run.message = data.get("message", run.message)
        run.error = data.get("error", run.error)
        counts = data.get("counts")
        if counts:
            run.counts = Counts(counts["total"], counts["success"], counts["failed"], counts["skipped"])

    def _wake(self, run_id: int) -> None:
        for waiter in self._waiters.pop(run_id, []):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_finished(self, run_id: int, still_active: Callable[[], Awaitable[bool]]) -> None:
        """Until the feed tells of the run's end; `still_active` (the database) is asked now
        and then, for a run whose events this node has not read yet."""
        while run_id not in self._ended_set:
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(run_id, [])
            waiters.append(waiter)
            try:
                async with asyncio.timeout(1.0):
                    await waiter
                return
            except TimeoutError:
                if not await still_active():
                    return
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(run_id, None)
