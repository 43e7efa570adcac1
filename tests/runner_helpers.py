"""What the runner tests share: a recording RunReporter, a run to execute, and process checks."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.config import JobConfig
from jobd.models import Run, RunStatus, TriggerSource
from jobd.runner import Outcome, execute

SCRIPTS = Path(__file__).parent / "scripts"
GRACE = 0.3
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Recorder:
    """The worker pool's side of RunReporter, reduced to recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.threads: set[int] = set()
        self._changed = asyncio.Event()

    def progress(self, percent: float, message: str | None) -> None:
        self._add("progress", percent, message)

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        given = {"total": total, "success": success, "failed": failed, "skipped": skipped}
        self._add("counts", {key: value for key, value in given.items() if value is not None})

    def result(self, value: Any) -> None:
        self._add("result", value)

    def log(self, line: str, stream: str) -> None:
        self._add("log", stream, line)

    def _add(self, *call: Any) -> None:
        self.calls.append(call)
        self.threads.add(threading.get_ident())
        self._changed.set()

    def of(self, kind: str) -> list[Any]:
        return [call[1] if len(call) == 2 else call[1:] for call in self.calls if call[0] == kind]

    def lines(self, stream: str) -> list[str]:
        return [call[2] for call in self.calls if call[0] == "log" and call[1] == stream]

    def pid(self, label: str) -> int | None:
        for line in self.lines("stdout"):
            if line.startswith(label + " "):
                return int(line.split()[1])
        return None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def make_run(**fields: Any) -> Run:
    fields.setdefault("id", 7)
    return Run(job="t", status=RunStatus.PROCESSING, triggered_by=TriggerSource.MANUAL, created_at=0, **fields)


async def run_job(
    job: JobConfig, run: Run | None = None, *, environ: dict[str, str] | None = None, grace: float = GRACE
) -> tuple[Outcome, Recorder]:
    recorder = Recorder()
    async with asyncio.timeout(10):
        outcome = await execute(
            job, run or make_run(), recorder, kill_grace_s=grace, environ=BASE_ENV if environ is None else environ
        )
    assert asyncio.all_tasks() == {asyncio.current_task()}, "execute() left a task behind"
    return outcome, recorder


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited; only its (re)parent has not reaped it yet.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(*pids: int | None, timeout: float = 5.0) -> None:
    assert all(pid is not None for pid in pids), f"pids not reported: {pids}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(is_gone(pid) for pid in pids if pid is not None):
        if loop.time() > deadline:
            alive = [pid for pid in pids if pid is not None and not is_gone(pid)]
            pytest.fail(f"processes still alive: {alive}")
        await asyncio.sleep(0.01)


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test saw; any still alive at the end are killed so no test leaves a process behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)


def shell(script: str, **fields: Any) -> JobConfig:
    return JobConfig(name="t", shell=script, **fields)
