"""Group commit of new runs: the triggers that arrive while one transaction commits are admitted
together in the next.

Each request is decided as it would be alone, in arrival order. A job whose overlap policy looks
at its active runs, or whose request carries an idempotency key, is locked once per batch (in
one order for every node) and its counts are carried through the batch, so the policy sees the
runs admitted before it in the same transaction. A
request that has to look at the active runs themselves (a refusal names them; `replace` cancels
them) first writes what the batch admitted so far, so the rows it reads are current. A request
that fails on its own (an overlap conflict) leaves the others admitted; a batch the database
refuses as a whole is tried again one request per transaction, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence

import psycopg

from jobd.cluster import writes
from jobd.config import JobConfig
from jobd.errors import OverlapConflict, Unavailable
from jobd.lifecycle import admission, idempotency
from jobd.lifecycle.backend import Submission
from jobd.models import Run, TriggerSource
from jobd.store.base import IdempotencyKey
from jobd.store.postgres import runs
from jobd.store.postgres.runs import Admission, Conn

MAX_REQUESTS = 256
UNCOUNTED = Admission(pending=0, processing=0)  # a job whose policy admits whatever the counts

NewRun = Callable[[JobConfig, Submission, TriggerSource, "int | None"], Run]
Replace = Callable[[Conn, Run, str], Awaitable[None]]
Created = Callable[[list[Run]], None]


@dataclasses.dataclass(slots=True)
class Request:
    job: JobConfig
    submissions: Sequence[Submission]
    triggered_by: TriggerSource
    overlap: str
    scheduled_for: int | None
    done: asyncio.Future[list[Run]]

    @property
    def key(self) -> str | None:
        """The idempotency key that may answer this request with an existing run."""
        return self.submissions[0].idempotency_key if len(self.submissions) == 1 else None


class _Batch:
    """One transaction's admissions: the counts under the locks and the runs not yet written."""

    def __init__(self, conn: Conn, ids: Iterator[int]) -> None:
        self.conn = conn
        self.ids = ids
        self.counts: dict[str, Admission] = {}
        self.unwritten: list[Run] = []
        self.keys: list[IdempotencyKey] = []
        self.keyed: dict[tuple[str, str], Run] = {}
        self.admitted: list[Run] = []

    async def write(self) -> None:
        if self.unwritten:
            await runs.create_runs(self.conn, self.unwritten)
            self.admitted.extend(self.unwritten)
            self.unwritten = []
        for key in self.keys:
            await runs.save_idempotent(self.conn, key)
        self.keys = []


class Creator:
    def __init__(
        self,
        connection: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        *,
        new_run: NewRun,
        clock: Callable[[], int],
        replace: Replace,
        created: Created,
    ) -> None:
        self._connection = connection
        self._new_run = new_run
        self._clock = clock
        self._replace = replace
        self._created = created
        self._queue: list[Request] = []
        self._more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-create")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(self._queue, Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5))
        self._queue = []

    async def create(
        self,
        job: JobConfig,
        submissions: Sequence[Submission],
        *,
        triggered_by: TriggerSource,
        overlap: str,
        scheduled_for: int | None,
    ) -> list[Run]:
        done: asyncio.Future[list[Run]] = asyncio.get_running_loop().create_future()
        self._queue.append(Request(job, submissions, triggered_by, overlap, scheduled_for, done))
        self._more.set()
        return await done

    async def _run(self) -> None:
        while True:
            await self._more.wait()
            batch, self._queue = self._queue[:MAX_REQUESTS], self._queue[MAX_REQUESTS:]
            if not self._queue:
                self._more.clear()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[Request]) -> None:
        try:
            async with self._connection() as conn, conn.transaction():
                outcomes, admitted = await self._admit(conn, batch)
        except psycopg.OperationalError as exc:
            self._fail(batch, Unavailable(f"the database is unreachable: {exc}", retry_after_s=5))
            return
        except psycopg.Error as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            for request in batch:
                await self._commit([request])
            return
        except asyncio.CancelledError:
            self._fail(batch, Unavailable("jobd is shutting down; not accepting new runs", retry_after_s=5))
            raise
        if admitted:
            self._created(admitted)
        for request, outcome in zip(batch, outcomes):
            if request.done.done():
                continue
            if isinstance(outcome, Exception):
                request.done.set_exception(outcome)
            else:
                request.done.set_result(outcome)

    @staticmethod
    def _fail(batch: Sequence[Request], exc: BaseException) -> None:
        for request in batch:
            if not request.done.done():
                request.done.set_exception(exc)

    async def _admit(self, conn: Conn, requests: list[Request]) -> tuple[list[list[Run] | Exception], list[Run]]:
        batch = _Batch(conn, iter(()))
        # `queue` and `allow` admit whatever the counts (the claim holds runs to the job's slots),
        # so a batch of only those takes no job lock: creating runs does not wait on claiming them.
        locked = {r.job.name for r in requests if r.key is not None or admission.counts_matter(r.overlap)}
        for job in sorted(locked):
            batch.counts[job] = await runs.admit(conn, job)
        ids = await runs.next_run_ids(conn, sum(len(request.submissions) for request in requests))
        batch.ids = iter(ids)  # a refused request's ids are left unused, as a rollback leaves them
        outcomes: list[list[Run] | Exception] = []
        for request in requests:
            try:
                outcomes.append(await self._admit_one(batch, request))
            except OverlapConflict as exc:
                outcomes.append(exc)
        await batch.write()
        return outcomes, batch.admitted

    async def _keyed(self, conn: Conn, job: str, key: str) -> Run | None:
        """The run the key created within the window (under the job's lock)."""
        run_id = await runs.find_idempotent(conn, job, key, idempotency.window_start(self._clock()))
        return None if run_id is None else await runs.get_run(conn, run_id)

    async def _admit_one(self, batch: _Batch, request: Request) -> list[Run]:
        job = request.job.name
        key = request.key
        if key is not None:
            found = batch.keyed.get((job, key)) or await self._keyed(batch.conn, job, key)
            if found is not None:
                return [found]
        counts = batch.counts.get(job, UNCOUNTED)
        count = len(request.submissions)
        decision = admission.decide(request.overlap, pending=counts.pending, processing=counts.processing, count=count)
        if decision is not admission.Decision.ADMIT:
            await batch.write()
            active = await writes.active_of(batch.conn, job)
            if decision is admission.Decision.REFUSE:
                raise admission.refusal(job, request.overlap, active)
            for run in active:
                await self._replace(batch.conn, run, f"replaced by a newer run of {job!r}")
            counts = batch.counts[job] = await runs.admit(batch.conn, job)
        new = []
        for submission in request.submissions:
            run = self._new_run(request.job, submission, request.triggered_by, request.scheduled_for)
            run.id = next(batch.ids)
            new.append(run)
            if submission.idempotency_key:
                batch.keys.append(IdempotencyKey(job, submission.idempotency_key, run.id, run.created_at))
                batch.keyed[(job, submission.idempotency_key)] = run
        batch.unwritten.extend(new)
        batch.counts[job] = Admission(pending=counts.pending + count, processing=counts.processing)
        return new
