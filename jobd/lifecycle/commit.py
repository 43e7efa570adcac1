"""Writing a run's terminal state: committed once, whatever the store goes through meanwhile.

The run has ended; the store must say so once it can write again (a full disk freed, a lock
released, an I/O error gone). While the store answers StoreUnavailable the same rows are written
again, the wait doubling each time; `committed` is called once they are in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from jobd.models import Run
from jobd.store import JobState, Store, StoreUnavailable
from jobd.store.notifications import NewNotification

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


def retry_delay_s(attempt: int) -> float:
    """The wait before writing again after `attempt` refused writes."""
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2.0 ** (attempt - 1))


class TerminalWrite:
    """One terminal state (and the retry committed with it) on its way into the store.

    `done` resolves once committed and announced; it fails at once with the store's error when a
    write is refused (whoever waits, a cancel request, hears of it) while the writing goes on.
    `settled` is called when the write is over either way: committed, or given up on because the
    store has closed or refuses the rows for good (the next start finds the run interrupted).
    """

    __slots__ = ("_committed", "_settled", "attempts", "done", "log", "notifications", "rows", "run", "state", "store")

    def __init__(
        self,
        store: Store,
        run: Run,
        rows: Sequence[Run],
        state: JobState,
        *,
        committed: Callable[[], None],
        settled: Callable[[], None],
        log: Any,
        notifications: Sequence[NewNotification] = (),
    ) -> None:
        self.store = store
        self.notifications = notifications
        self.run = run
        self.rows = rows
        self.state = state
        self._committed = committed
        self._settled = settled
        self.log = log
        self.attempts = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def submit(self) -> asyncio.Future[None]:
        try:
            # The job state as it is now: a later submit writes the newer one.
            self.store.submit_then(
                self._on_commit, self.rows, job_states=[self.state.copy()], notifications=self.notifications
            )
        except Exception as exc:  # the store has closed
            self._give_up("finish_abandoned", exc, error=str(exc))
        return self.done

    def _on_commit(self, error: Exception | None) -> None:
        if error is None:
            self._settled()
            try:
                self._committed()
            except Exception as exc:  # keep the run table alive whatever happens in a callback
                self.log.exception("finish_failed", run_id=self.run.id, job=self.run.job)
                _fail_quietly(self.done, exc)
                return
            if not self.done.done():
                self.done.set_result(None)
        elif isinstance(error, StoreUnavailable):
            self.attempts += 1
            delay = retry_delay_s(self.attempts)
            self.log.error(
                "finish_not_committed",
                run_id=self.run.id,
                job=self.run.job,
                error=str(error),
                attempt=self.attempts,
                retry_in_s=delay,
            )
            self.done.get_loop().call_later(delay, self.submit)
            _fail_quietly(self.done, error)
        else:
            # Rows the store cannot take: writing them again would fail every batch they joined.
            self._give_up("finish_not_committed", error, error=repr(error), retry_in_s=None)

    def _give_up(self, event: str, exc: Exception, **fields: Any) -> None:
        self._settled()
        self.log.error(event, run_id=self.run.id, job=self.run.job, **fields)
        _fail_quietly(self.done, exc)


def _fail_quietly(done: asyncio.Future[None], exc: BaseException) -> None:
    """Fail with an error already logged: callers that never await it stay quiet."""
    if not done.done():
        done.set_exception(exc)
        done.exception()
