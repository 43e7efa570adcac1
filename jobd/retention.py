"""Retention: the daily clean-up of old runs, their log files, expired idempotency keys and old
audit records (`[retention] audit_days`), and in a cluster of the events and cron fire records the
nodes share.

Finished runs older than `[retention] days` (FAILED ones: `failed_days`; 0 keeps them for ever)
are deleted in small batches, each its own short transaction with a pause after it, so API reads
and the commits of running jobs never wait long behind the clean-up. Job state (consecutive
failures, last fire, paused) lives in its own table and is never touched; the newest run and each
job's last run are kept (see `Store.delete_runs`). The rollups behind the statistics follow the
deletions, so statistics cover the runs that are kept.

In a cluster one node at a time cleans up (an advisory lock; the others skip their turn). It also
trims the events table from its start, leaving the newest `events.ring_size` events (what a
client can still resume from, see docs/streams.md) and every event younger than an hour (a node
whose tail fell behind still reads them), and the fire records older than the runs they made may
be kept, leaving each job's last fire (cron catch-up starts from it) and the last day of them
(every node's scheduler deduplicates the fires it is about to make against these).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobd.config import RetentionConfig
from jobd.lifecycle import idempotency
from jobd.models import DAY_MS, RunStatus, now_ms
from jobd.runlog import log_path
from jobd.store.base import DeletedRuns

# After each batch: lets queued commits and reads through, and keeps the clean-up's I/O share small.
BATCH_PAUSE_S = 0.05
KEPT_LONGER = (RunStatus.COMPLETED, RunStatus.PARTIAL, RunStatus.CANCELLED)
EVENTS_KEPT_MS = 3_600_000  # at least, whatever their number
FIRES_KEPT_MS = DAY_MS  # at least, whatever the runs' retention


class RunTable(Protocol):
    """Who owns the runs (the run backend): it deletes them and keeps its totals in step."""

    async def delete_finished(
        self, *, cutoffs: Mapping[RunStatus, int], limit: int, after: tuple[int, int] | None = None
    ) -> DeletedRuns: ...

    async def delete_idempotency_keys(self, *, created_before: int, limit: int) -> int: ...


class NotificationTable(Protocol):
    async def trim(self, *, before: int, limit: int) -> int: ...


class AuditTable(Protocol):
    async def delete_audit(self, *, before: int, limit: int) -> int: ...


class SharedTables(Protocol):
    """A cluster's store: the lock that makes one node the cleaner, and the tables only a cluster has."""

    def exclusive(self) -> AbstractAsyncContextManager[bool]: ...

    async def events_horizon(self, keep: int) -> tuple[int, int] | None: ...

    async def trim_events(self, *, through: tuple[int, int], created_before: int, limit: int) -> int: ...

    async def trim_fires(self, *, before: int, limit: int) -> int: ...


@dataclasses.dataclass(slots=True)
class SweepResult:
    runs: Counter[RunStatus] = dataclasses.field(default_factory=Counter)
    logs: int = 0
    keys: int = 0
    events: int = 0
    fires: int = 0
    notifications: int = 0
    audit: int = 0
    batches: int = 0
    elsewhere: bool = False  # another node of the cluster was cleaning up: this one did nothing


class Retention:
    def __init__(
        self,
        config: RetentionConfig,
        *,
        runs: RunTable,
        logs_dir: Path,
        clock: Callable[[], int] = now_ms,
        pause_s: float = BATCH_PAUSE_S,
        shared: SharedTables | None = None,
        audit: AuditTable | None = None,
        keep_events: int = 10_000,
        notifications: NotificationTable | None = None,
        log: Any = None,
    ) -> None:
        self.notifications = notifications
        self.config = config
        self.runs = runs
        self.shared = shared
        self.audit = audit
        self.keep_events = keep_events
        self.logs_dir = logs_dir
        self.clock = clock
        self.pause_s = pause_s
        self.log = log or structlog.get_logger("jobd.retention")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="retention")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def cancel(self) -> None:
        """Stop at once (a drain: nothing is deleted while runs are being stopped)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def cutoffs(self, now: int) -> dict[RunStatus, int]:
        """Per status, the finish time before which a run is deleted; statuses kept for ever are absent."""
        cutoffs: dict[RunStatus, int] = {}
        if self.config.days > 0:
            cutoffs.update(dict.fromkeys(KEPT_LONGER, now - round(self.config.days * DAY_MS)))
        if self.config.failed_days > 0:
            cutoffs[RunStatus.FAILED] = now - round(self.config.failed_days * DAY_MS)
        return cutoffs

    async def run(self) -> None:
        """The first clean-up shortly after start, then one every `interval_s` (a day)."""
        await asyncio.sleep(self.config.first_delay_s)
        while True:
            try:
                await self.sweep()
            except Exception:  # a failed clean-up is tried again next time; jobd carries on
                self.log.exception("retention_failed")
            await asyncio.sleep(self.config.interval_s)

    def fires_cutoff(self, now: int) -> int | None:
        """The scheduled time before which a fire record is deleted: kept as long as the runs it
        may have made, and a day at least; None (kept for ever) while any run is."""
        if self.config.days <= 0 or self.config.failed_days <= 0:
            return None
        return now - max(round(max(self.config.days, self.config.failed_days) * DAY_MS), FIRES_KEPT_MS)

    async def sweep(self) -> SweepResult:
        if self.shared is None:
            return await self._sweep()
        async with self.shared.exclusive() as mine:
            if not mine:
                self.log.info("retention_elsewhere")
                return SweepResult(elsewhere=True)
            return await self._sweep()

    async def _sweep(self) -> SweepResult:
        started = asyncio.get_running_loop().time()
        now = self.clock()
        result = SweepResult()
        cutoffs = self.cutoffs(now)
        cursor: tuple[int, int] | None = None
        while cutoffs:
            batch = await self.runs.delete_finished(cutoffs=cutoffs, limit=self.config.batch_size, after=cursor)
            result.batches += 1
            if batch.deleted:
                result.runs.update(status for _, status in batch.deleted)
                result.logs += await self._remove_logs(run_id for run_id, _ in batch.deleted)
            if batch.cursor is None:
                break
            cursor = batch.cursor
            await asyncio.sleep(self.pause_s)
        while True:
            deleted = await self.runs.delete_idempotency_keys(
                created_before=idempotency.window_start(now), limit=self.config.batch_size
            )
            result.keys += deleted
            if deleted < self.config.batch_size:
                break
            await asyncio.sleep(self.pause_s)
        if self.notifications is not None and self.config.days > 0:
            # Delivered, failed and snoozed ones, after as long as completed runs are kept.
            notifications, before = self.notifications, now - round(self.config.days * DAY_MS)
            result.notifications = await self._batches(
                lambda: notifications.trim(before=before, limit=self.config.batch_size)
            )
        if self.audit is not None and self.config.audit_days > 0:
            audit, before = self.audit, now - round(self.config.audit_days * DAY_MS)
            result.audit = await self._batches(lambda: audit.delete_audit(before=before, limit=self.config.batch_size))
        shared = {}
        if self.shared is not None:
            await self._trim_shared(self.shared, now, result)
            shared = {"events_deleted": result.events, "fires_deleted": result.fires}
        self.log.info(
            "retention_sweep",
            runs_deleted=sum(result.runs.values()),
            by_status={s.value: n for s, n in result.runs.items()},
            logs_deleted=result.logs,
            keys_deleted=result.keys,
            notifications_deleted=result.notifications,
            audit_deleted=result.audit,
            **shared,
            batches=result.batches,
            duration_ms=round((asyncio.get_running_loop().time() - started) * 1000),
        )
        return result

    async def _trim_shared(self, shared: SharedTables, now: int, result: SweepResult) -> None:
        horizon = await shared.events_horizon(self.keep_events)
        if horizon is not None:
            through = horizon
            result.events = await self._batches(
                lambda: shared.trim_events(
                    through=through, created_before=now - EVENTS_KEPT_MS, limit=self.config.batch_size
                )
            )
        before = self.fires_cutoff(now)
        if before is not None:
            result.fires = await self._batches(lambda: shared.trim_fires(before=before, limit=self.config.batch_size))

    async def _batches(self, batch: Callable[[], Awaitable[int]]) -> int:
        """Run a deleting batch until one deletes less than a whole batch; how many went in all."""
        total = 0
        while True:
            deleted = await batch()
            total += deleted
            if deleted < self.config.batch_size:
                return total
            await asyncio.sleep(self.pause_s)

    async def _remove_logs(self, run_ids: Iterable[int]) -> int:
        paths = [log_path(self.logs_dir, run_id) for run_id in run_ids]
        removed, errors = await asyncio.to_thread(_unlink_all, paths)
        if errors:
            self.log.warning("retention_log_not_deleted", count=len(errors), first=errors[0])
        # Emptied folders go on the loop's thread: a run starting its log in one (RunLog creates
        # the folder, then the file, on this thread) cannot have it removed in between.
        for folder in {path.parent for path in paths}:
            try:
                folder.rmdir()
            except OSError:  # still holds logs of runs that are kept, or already gone
                pass
        return removed


def _unlink_all(paths: list[Path]) -> tuple[int, list[str]]:
    removed, errors = 0, []
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:  # a run that printed nothing has no log file
            pass
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
    return removed, errors
