"""Group commit of this node's run ends and progress: what piled up while the previous
transaction ran is written in the next one, each end checked against its claim token."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from jobd.cluster import writes
from jobd.cluster.chaining import Chainer
from jobd.models import Run
from jobd.store import audit
from jobd.store.postgres import runs
from jobd.store.postgres.runs import Conn

MAX_RETRY_S = 5.0
PROGRESS_EVERY_S = 0.25

Ended = Callable[[Run, bool, int], None]
_End = tuple[Run, uuid.UUID | None, Run | None, asyncio.Future[None]]


class EndWriter:
    def __init__(
        self,
        connection: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        ended: Ended,
        *,
        log: Any,
        plan: writes.PlanEnd | None = None,
        chainer: Chainer | None = None,
        pause_after: Callable[[str], int | None] | None = None,
    ) -> None:
        self._connection = connection
        self._plan = plan
        self._pause_after = pause_after
        self._ended = ended
        self._chainer = chainer
        self.log = log
        self._ends: list[_End] = []
        self._progress: dict[int, tuple[Run, uuid.UUID]] = {}
        self._audit: list[audit.AuditRecord] = []
        self._audit_waiters: list[asyncio.Future[None]] = []
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-writer")

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.wait_settled()
                if self._audit:
                    await self.flush_audit()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_settled(self) -> None:
        while self._ends or self._inflight:
            self._idle.clear()
            await self._idle.wait()

    def end(self, final: Run, token: uuid.UUID | None, again: Run | None) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress.pop(final.id, None)
        self._ends.append((final, token, again, done))
        self._more.set()
        return done

    def progress(self, run: Run, token: uuid.UUID) -> None:
        self._progress[run.id] = (run, token)

    def append_audit(self, record: audit.AuditRecord) -> None:
        """Rides along with the next transaction: at the latest the next progress tick's."""
        self._audit.append(record)

    async def flush_audit(self) -> None:
        """Returns once the audit records handed in so far are committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._audit_waiters.append(done)
        self._more.set()
        await done

    async def _run(self) -> None:
        failures = 0
        last_progress = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_EVERY_S):
                    await self._more.wait()
            self._more.clear()
            ends, self._ends = self._ends, []
            progress: list[tuple[Run, uuid.UUID]] = []
            if loop.time() - last_progress >= PROGRESS_EVERY_S:
                progress = [(writes.cleaned(run.copy()), token) for run, token in self._progress.values()]
                self._progress.clear()
                last_progress = loop.time()
            records, self._audit = self._audit, []
            audited, self._audit_waiters = self._audit_waiters, []
            if not ends and not progress and not records:
                _settle(audited)
                self._idle.set()
                continue
            self._inflight = len(ends)
            try:
                async with self._connection() as conn:
                    async with conn.transaction():
                        await runs.finish_many(conn, progress)
                        if records:
                            async with conn.cursor() as cur:
                                await cur.executemany(audit.insert_sql("%s"), [r.row() for r in records])
                        ended = await writes.ended(
                            conn,
                            [(f, t, a) for f, t, a, _ in ends],
                            last_runs_later=True,
                            plan=self._plan,
                            chainer=self._chainer,
                            pause_after=self._pause_after,
                        )
                    streaks = await ended.streaks()  # answered before the COMMIT
            except psycopg.Error as exc:
                failures += 1
                self.log.error("finish_not_committed", runs=len(ends), error=str(exc), attempt=failures)
                self._ends[:0] = ends
                self._audit[:0] = records
                self._audit_waiters[:0] = audited
                await asyncio.sleep(min(MAX_RETRY_S, 0.1 * 2**failures))
                self._more.set()
                continue
            finally:
                self._inflight = 0
            failures = 0
            _settle(audited)
            for final, _, _, done in ends:
                self._ended(final, final.id in streaks, streaks.get(final.id, 0))
                if not done.done():
                    done.set_result(None)
            try:
                async with self._connection() as conn:
                    await ended.save_last_runs(conn)
            except psycopg.Error as exc:  # the ends are committed; a later end of the job writes a newer one
                self.log.warning("last_runs_not_saved", error=str(exc))
            if not self._ends:
                self._idle.set()


def _settle(waiters: list[asyncio.Future[None]]) -> None:
    for done in waiters:
        if not done.done():
            done.set_result(None)
