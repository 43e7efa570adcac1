"""The worker pool: N tasks claiming runs from the run backend and running their handlers.

The pool owns the tasks that run handlers: the backend asks it to stop a run (`cancel()`), and
nothing else touches them. Stopping is staged: idle workers stop at once; busy ones get a grace
period to finish; what is busy running after it is interrupted (process groups terminated, then
killed; Python tasks cancelled) and recorded as such by the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from jobd import runner
from jobd.config import JobConfig
from jobd.lifecycle import INTERRUPTED, RunBackend
from jobd.lifecycle import rules as runrules
from jobd.models import Run, RunStatus
from jobd.runlog import RunLog, log_file

OUTLASTED = INTERRUPTED + " (its handler outlasted the kill grace)"


class _Reporter:
    """What a handler reports, forwarded to the backend and the run's log."""

    __slots__ = ("backend", "run", "run_log")

    def __init__(self, backend: RunBackend, run: Run, run_log: RunLog) -> None:
        self.backend = backend
        self.run = run
        self.run_log = run_log

    def progress(self, percent: float, message: str | None) -> None:
        run = self.run
        run.progress = max(0.0, min(100.0, float(percent)))
        if message is not None:
            run.message = message
        self.backend.report(run)

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        counts = self.run.counts
        for name, value in (("total", total), ("success", success), ("failed", failed), ("skipped", skipped)):
            if value is not None:
                setattr(counts, name, int(value))
        self.backend.report(self.run)

    def result(self, value: Any) -> None:
        self.run.result = value
        self.run.updated_at = self.backend.clock()

    def log(self, line: str, stream: str) -> None:
        self.run_log.write(stream, line)
        self.backend.report_log(self.run, line, stream)


class WorkerPool:
    def __init__(
        self,
        backend: RunBackend,
        *,
        concurrency: int,
        logs_dir: Path,
        kill_grace_s: float,
        log_tail_bytes: int,
        max_log_bytes: int,
        environ: Mapping[str, str],
        log: Any = None,
    ) -> None:
        self.backend = backend
        self.concurrency = concurrency
        self.logs_dir = logs_dir
        self._logs_dir = str(logs_dir)
        self.kill_grace_s = kill_grace_s
        self.log_tail_bytes = log_tail_bytes
        self.max_log_bytes = max_log_bytes
        self.environ = dict(environ)
        self.log = log or structlog.get_logger("jobd.workers")
        self._workers: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None]] = set()
        self._handlers: dict[int, asyncio.Task[Any]] = {}  # a run's task, or its worker's (see _run_here)
        self._running: dict[int, Run] = {}
        self._logs: dict[int, RunLog] = {}
        self._stopping = False
        self._give_up_at: float | None = None  # loop time when a stop stops waiting for interrupted runs
        self._hurry = asyncio.Event()

    @property
    def busy(self) -> int:
        return len(self._workers) - len(self._idle)

    def live_tail(self, run_id: int) -> str:
        """The log tail of a run in progress ('' when it has not started)."""
        run_log = self._logs.get(run_id)
        return run_log.tail() if run_log is not None else ""

    def start(self) -> None:
        self.backend.on_cancel(self.cancel)
        for index in range(self.concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"worker-{index}"))

    def cancel(self, run_id: int) -> None:
        """Stop the run's handler (an operator's cancel; the backend records it as such)."""
        handler = self._handlers.get(run_id)
        if handler is not None:
            handler.cancel()

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            self._idle.add(me)
            try:
                run, job = await self.backend.claim()
            finally:
                self._idle.discard(me)
            try:
                await self._execute(run, job)
            except Exception:  # one broken run must not take a worker down with it
                self.log.exception("worker_error", run_id=run.id, job=run.job)
            finally:
                self.backend.release(run)

    async def _execute(self, run: Run, job: JobConfig) -> None:
        backend = self.backend
        if backend.cancel_requested(run.id):
            backend.finish(run, RunStatus.CANCELLED, error=run.error or "cancelled")
            return
        run_log = RunLog(log_file(self._logs_dir, run.id), max_bytes=self.max_log_bytes, tail_bytes=self.log_tail_bytes)
        reporter = _Reporter(backend, run, run_log)
        self._logs[run.id] = run_log
        self._running[run.id] = run
        try:
            if job.kind == "python":
                outcome = await self._run_here(job, run, reporter)
            else:
                outcome = await self._run_in_task(job, run, reporter)
        finally:
            self._handlers.pop(run.id, None)
            self._logs.pop(run.id, None)
            self._running.pop(run.id, None)
            run_log.close()
        tail = run_log.tail()
        if outcome is None:  # stopped before its end
            if self._outlasted():
                # What stop() records for a run still here at its deadline; one that, ended in the
                # same moment, reached this worker first is recorded the same way.
                self._abandoned(run, tail)
            elif backend.cancel_requested(run.id):
                backend.finish(run, RunStatus.CANCELLED, error=run.error or "cancelled", log_tail=tail)
            else:
                run.log_tail = tail
                backend.interrupt(run, INTERRUPTED)
            return
        if outcome.error is None:
            status = RunStatus.PARTIAL if run.counts.failed > 0 else RunStatus.COMPLETED
        else:
            status = RunStatus.FAILED
        status, error = runrules.judge(job, run, status, outcome, now=backend.clock())
        # The worker moves on at once; the run leaves the table when its commit is done.
        backend.finish(run, status, error=error, exit_code=outcome.exit_code, result=outcome.result, log_tail=tail)

    async def _run_in_task(self, job: JobConfig, run: Run, reporter: _Reporter) -> runner.Outcome | None:
        """A command runs in a task of its own, which a stop may leave behind (a process SIGKILL
        cannot end yet) while this worker is stopped. None when it was cancelled."""
        handler = asyncio.create_task(
            runner.execute(job, run, reporter, kill_grace_s=self.kill_grace_s, environ=self.environ),
            name=f"run-{run.id}",
        )
        self._handlers[run.id] = handler
        await runner.ended(handler)
        return None if handler.cancelled() else handler.result()

    async def _run_here(self, job: JobConfig, run: Run, reporter: _Reporter) -> runner.Outcome | None:
        """A Python handler already runs in a task of its own, the one a stop leaves behind if it
        ignores its cancellation; the runner's steps around it always end within the kill grace,
        so they run in this worker's task, which is what stopping the run cancels: a task fewer
        per run. None when it was cancelled."""
        me = asyncio.current_task()
        assert me is not None
        self._handlers[run.id] = me
        try:
            return await runner.execute(job, run, reporter, kill_grace_s=self.kill_grace_s, environ=self.environ)
        except asyncio.CancelledError:
            if run.id not in self._handlers:  # stop() gave up on the run and is now stopping this worker
                raise
            while me.uncancel() > 0:  # the run's cancellation, not the worker's: it goes on
                pass
            return None
        finally:
            # The handler has ended: a cancel must not reach this worker, which goes on to other runs.
            if self._handlers.get(run.id) is me:
                del self._handlers[run.id]

    async def stop(self, grace_s: float) -> int:
        """Stop taking runs, let busy workers finish for up to `grace_s`, then interrupt the rest.

        Returns how many runs were interrupted.
        """
        self._stopping = True
        for task in self._idle:
            task.cancel()
        busy = await self._drain(grace_s)
        interrupted = len(self._handlers)
        for handler in list(self._handlers.values()):
            handler.cancel()
        wait_s = self.kill_grace_s + runner.PIPE_DRAIN_S + 0.25
        self._give_up_at = asyncio.get_running_loop().time() + wait_s
        if busy:
            # Handlers now terminate their process groups (kill grace, then the pipes drain) and
            # are recorded as interrupted.
            _, busy = await asyncio.wait(busy, timeout=wait_s)
        for run_id in list(self._handlers):
            # The runner ends a handler within the kill grace (plus the pipes' drain) even if it ignores
            # its cancellation; one still here has outlasted that: an async handler blocking the event
            # loop, or a process that SIGKILL cannot end yet (uninterruptible I/O). Its worker is
            # cancelled below without recording the run, so it is recorded here, or it would stay
            # PROCESSING until the next start.
            run = self._running.get(run_id)
            self._handlers.pop(run_id, None)
            run_log = self._logs.get(run_id)
            if run is not None and run.status is RunStatus.PROCESSING:
                self._abandoned(run, run_log.tail() if run_log is not None else None)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        return interrupted

    def _abandoned(self, run: Run, tail: str | None) -> None:
        self.log.warning("run_abandoned", run_id=run.id, job=run.job, reason="handler outlasted the kill grace")
        if tail is not None:
            run.log_tail = tail
        self.backend.interrupt(run, OUTLASTED)

    def _outlasted(self) -> bool:
        """Whether a stop has waited for the interrupted runs as long as it does (see stop())."""
        return self._give_up_at is not None and asyncio.get_running_loop().time() >= self._give_up_at

    def hurry(self) -> None:
        """Cut the grace period short (a second stop signal)."""
        self._hurry.set()

    async def _drain(self, grace_s: float) -> set[asyncio.Task[Any]]:
        """Wait for busy workers until they are done, the grace is over, or hurry() is called."""
        busy: set[asyncio.Task[Any]] = {task for task in self._workers if not task.done()}
        if not busy:
            return busy
        hurry: asyncio.Task[Any] = asyncio.create_task(self._hurry.wait())
        try:
            async with asyncio.timeout(grace_s):
                while busy and not self._hurry.is_set():
                    _, busy = await asyncio.wait({*busy, hurry}, return_when=asyncio.FIRST_COMPLETED)
                    busy.discard(hurry)
        except TimeoutError:
            pass
        finally:
            hurry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hurry
        return {task for task in busy if not task.done()}
