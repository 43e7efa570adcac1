"""Writing a terminal state: once committed, `committed` runs once; a store that refuses it for
now (a lock) gets it again until it takes it; rows it can never take are given up on."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import structlog
from conftest import wait_for

from jobd.lifecycle.commit import MAX_RETRY_S, TerminalWrite, retry_delay_s
from jobd.models import Run, RunStatus, TriggerSource, now_ms
from jobd.store import JobState, SQLiteStore, StoreUnavailable


class Outcome:
    def __init__(self) -> None:
        self.committed = 0
        self.settled = 0
        self.log = structlog.testing.CapturingLogger()

    def write(self, store: SQLiteStore, run: Run) -> TerminalWrite:
        def committed() -> None:
            self.committed += 1

        def settled() -> None:
            self.settled += 1

        return TerminalWrite(
            store,
            run,
            [run],
            JobState(run.job, consecutive_failures=1),
            committed=committed,
            settled=settled,
            log=structlog.wrap_logger(self.log, processors=[]),
        )

    def events(self, name: str) -> list[dict[str, object]]:
        return [call.kwargs for call in self.log.calls if call.kwargs.get("event") == name]


def ended(store: SQLiteStore, **fields: object) -> Run:
    now = now_ms()
    run = Run(
        id=store.allocate_run_id(),
        job="j",
        status=RunStatus.FAILED,
        triggered_by=TriggerSource.API,
        created_at=now,
        finished_at=now,
    )
    for name, value in fields.items():
        setattr(run, name, value)
    return run


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    yield store
    await store.close()


async def test_committed_once_with_the_job_state(store) -> None:
    outcome = Outcome()
    run = ended(store)
    await outcome.write(store, run).submit()
    assert (outcome.committed, outcome.settled) == (1, 1)
    assert (await store.get_run(run.id)).status is RunStatus.FAILED
    assert (await store.job_states())["j"].consecutive_failures == 1


async def test_a_refused_write_is_tried_again_until_it_is_in(store) -> None:
    outcome = Outcome()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        done = outcome.write(store, ended(store)).submit()
        with pytest.raises(StoreUnavailable):  # whoever waits hears of it at once
            await asyncio.wait_for(done, 20)
        [refused] = outcome.events("finish_not_committed")
        assert refused["attempt"] == 1 and refused["retry_in_s"] == 0.5
        assert (outcome.committed, outcome.settled) == (0, 0)
    finally:
        blocker.rollback()
        blocker.close()
    await wait_for(lambda: outcome.committed == 1, timeout=20)
    assert outcome.settled == 1


async def test_rows_the_store_can_never_take_are_given_up_on(store) -> None:
    outcome = Outcome()
    done = outcome.write(store, ended(store, progress=float("nan"))).submit()  # not JSON
    with pytest.raises(ValueError):
        await done
    assert (outcome.committed, outcome.settled) == (0, 1)
    assert outcome.events("finish_not_committed")[0]["retry_in_s"] is None


def test_the_wait_doubles_up_to_a_limit() -> None:
    assert [retry_delay_s(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay_s(30) == MAX_RETRY_S
