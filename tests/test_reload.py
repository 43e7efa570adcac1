"""SIGHUP's reload, in process: what happens to runs that wait when their job changes or goes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BACKENDS, wait_for

from jobd.config import load_config
from jobd.models import RunStatus

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def write(path: Path, store: str, gate: Path, *, limit: int, removed: bool = False) -> Path:
    """`store`: the conftest `store_toml` of the test's backend."""
    gated = f"while [ ! -e '{gate}' ]; do sleep 0.02; done"
    text = (
        f"{store}[workers]\nconcurrency = 8\nshutdown_grace_s = 2\nkill_grace_s = 0.5\n"
        f'[jobs.wide]\nshell = "{gated}"\noverlap = "allow"\nmax_concurrency = {limit}\n'
    )
    if not removed:
        text += (
            f'[jobs.gone]\nshell = "{gated}; exit 1"\noverlap = "allow"\n'
            '[jobs.flaky]\nshell = "exit 1"\nretries = 1\nretry_backoff_s = 3600\n'
        )
    path.write_text(text)
    return path


async def test_reload_applies_to_runs_that_wait(tmp_path: Path, start_daemon, store_toml: str, backend: str) -> None:
    gate = tmp_path / "gate"
    path = write(tmp_path / "jobd.toml", store_toml, gate, limit=1)
    h = await start_daemon(config=load_config(path, environ={"PATH": "/usr/bin:/bin"}))
    runs = h.daemon.runs
    flaky = await h.trigger("flaky")
    await h.finished(flaky["id"])
    # Its retry, an hour away (a cluster node's table hears of it from the events table).
    [backing_off] = await wait_for(lambda: runs.active_of("flaky"))
    wide = [await h.trigger("wide") for _ in range(3)]
    gone = [await h.trigger("gone") for _ in range(2)]
    await wait_for(lambda: runs.is_running("wide") and runs.is_running("gone"))
    assert [await h.status_of(r["id"]) for r in wide] == [RunStatus.PROCESSING, RunStatus.PENDING, RunStatus.PENDING]

    # The limit goes up; `gone` and `flaky` go away.
    write(path, store_toml, gate, limit=3, removed=True)
    assert await h.daemon.reload()
    # Waiting runs of `wide` start at once under the new limit.
    await wait_for(lambda: all(runs.active[r["id"]].status is RunStatus.PROCESSING for r in wide))
    # A single jobd fails the runs of removed jobs that wait at once instead of waiting for ever;
    # a cluster node leaves them to the nodes that still have the job (a changed config reaches
    # the nodes one at a time), so they wait.
    left_waiting = {gone[1]["id"], backing_off.id} if backend == "postgresql" else set()
    if not left_waiting:
        assert (await h.finished(gone[1]["id"])).error == "job 'gone' is no longer configured"
        assert (await h.finished(backing_off.id)).error == "job 'flaky' is no longer configured"
    # ... and a running one carries on with the definition it started with.
    assert await h.status_of(gone[0]["id"]) is RunStatus.PROCESSING
    gate.touch()
    for run in wide:
        assert (await h.finished(run["id"])).status is RunStatus.COMPLETED
    ended = await h.finished(gone[0]["id"])
    assert (ended.status, ended.error) == (RunStatus.FAILED, "exit code 1")
    # No retry for a job that is gone; nothing else left waiting.
    await wait_for(lambda: set(runs.active) == left_waiting)
    assert {run.status for run in runs.active.values()} <= {RunStatus.PENDING}
