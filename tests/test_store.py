"""The SQLite store on its own: what is written comes back exactly as it was."""

from __future__ import annotations

import pytest

from jobd.models import Counts, Run, RunStatus, TriggerSource
from jobd.store import SQLiteStore

TRICKY = ['quote " backslash \\ slash / \\u0041', "tab\tnew\nline\r\x1f\x7f", "émoji 😀 and 漢字", "", "x" * 70_000]


@pytest.mark.parametrize("texts", [TRICKY, ["a NUL \x00 inside", *TRICKY]], ids=["one-statement", "with-nul"])
async def test_runs_come_back_as_written_whatever_their_text(tmp_path, texts):
    # A group commit's rows go in as one JSON document, or row by row when a text holds a NUL.
    store = SQLiteStore(tmp_path / "jobd.db")
    await store.open()
    try:
        runs = [
            Run(id=store.allocate_run_id(), job=f"job-{index}", status=RunStatus.PROCESSING,
                triggered_by=TriggerSource.API, created_at=1_790_000_000_123 + index,
                params={"text": text, "n": 2**62, "f": 0.1 + 0.2, "nested": [None, True, {"a": []}]},
                progress=100 / 3, message=text, started_at=1_790_000_000_200, log_tail=text,
                counts=Counts(total=None, success=3, failed=0, skipped=2**40), result={"text": text},
                updated_at=1_790_000_000_300)
            for index, text in enumerate(texts)
        ]
        await store.write(runs)
        assert await store.get_runs([run.id for run in runs]) == runs
        finished = [run.copy() for run in runs]
        for run in finished:  # the same rows again, as an upsert: the terminal state of each
            run.status, run.finished_at, run.error, run.exit_code = RunStatus.FAILED, 1_790_000_001_000, run.message, -9
        await store.write(finished)
        assert await store.get_runs([run.id for run in runs]) == finished
    finally:
        await store.close()
