"""Read views: status totals, each job's last run (read lazily from the store), the /queue snapshot."""

from __future__ import annotations

from jobd.lifecycle.jobstate import JobStates
from jobd.lifecycle.views import LastRuns, StatusTotals, queue_snapshot, status_line
from jobd.models import Run, RunStatus, TriggerSource
from jobd.store import SQLiteStore


def run(run_id: int, job: str = "j", created_at: int = 0) -> Run:
    return Run(id=run_id, job=job, status=RunStatus.PENDING, triggered_by=TriggerSource.API, created_at=created_at)


def test_totals() -> None:
    totals = StatusTotals({RunStatus.COMPLETED: 4})
    totals.created(2)
    totals.moved(RunStatus.PENDING, RunStatus.PROCESSING)
    totals.deleted([RunStatus.COMPLETED, RunStatus.COMPLETED])
    assert totals.as_json() == {
        "PENDING": 1,
        "PROCESSING": 1,
        "COMPLETED": 2,
        "PARTIAL": 0,
        "FAILED": 0,
        "CANCELLED": 0,
    }
    assert totals[RunStatus.FAILED] == 0


async def test_last_runs_are_read_from_the_store_once_then_kept(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    try:
        old = run(store.allocate_run_id())
        await store.write([old])
        states = JobStates()
        states.run_ended("j", RunStatus.COMPLETED, newest_run_id=old.id)
        states.of("never")
        last = LastRuns(store, states)
        assert last.known == {}  # nothing read at start
        found = await last.of(["j", "never", "unknown"])
        assert list(found) == ["j"] and found["j"].id == old.id
        newer = run(old.id + 1)
        last.note(newer)
        last.note(old)  # an older run ending later does not take its place
        assert (await last.of(["j"]))["j"] is newer
    finally:
        await store.close()


def test_the_queue_snapshot() -> None:
    totals = StatusTotals({RunStatus.PENDING: 2, RunStatus.PROCESSING: 1})
    pending = {2: run(2, created_at=5_000), 3: run(3, created_at=9_000)}
    snapshot = queue_snapshot(totals, pending, 1, workers_total=4, now=65_000)
    assert snapshot["pending"] == 2 and snapshot["processing"] == 1
    assert snapshot["workers"] == {"busy": 1, "total": 4} and snapshot["oldest_pending_age_s"] == 60.0
    assert queue_snapshot(StatusTotals(), {}, 0, workers_total=1, now=0)["oldest_pending_age_s"] is None
    assert status_line(3, 2, 1, stopping=False) == "3 jobs, 2 pending, 1 running"
    assert status_line(3, 0, 0, stopping=True) == "stopping: 3 jobs, 0 pending, 0 running"
