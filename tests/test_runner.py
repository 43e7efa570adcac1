from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobd.config import JobConfig
from jobd.models import Run, RunStatus, TriggerSource
from jobd.runlog import RunLog
from jobd.runner import MAX_LINE_BYTES, Outcome, execute, format_seconds

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


# --- command output -----------------------------------------------------------------------


async def test_protocol_lines_go_to_the_reporter() -> None:
    outcome, rec = await run_job(JobConfig(name="t", command=(str(SCRIPTS / "protocol.sh"),)))

    assert outcome == Outcome(exit_code=0, result=["last", 1], error=None, timed_out=False)
    assert rec.of("progress") == [
        (10.0, None),
        (42.5, "halfway there"),
        (50.0, None),
        (100.0, None),
        (0.0, "below zero"),
    ]
    assert rec.of("counts") == [{"total": 50, "success": 46, "failed": 2, "skipped": 2}, {"success": 47}]
    assert rec.of("result") == [{"rows": 3}, ["last", 1]]
    assert rec.lines("stdout") == ["plain line", ""]
    assert rec.lines("stderr") == ["::progress::99 on stderr"]


@pytest.mark.parametrize(
    "line",
    [
        "::progress::",
        "::progress::abc",
        "::progress::nan",
        "::progress::12abc message",
        "::counts::",
        "::counts::total=-1",
        "::counts::total=1.5",
        "::counts::bogus=1",
        "::counts::total=1 success",
        "::counts::success=\u00b2",
        "::result::",
        "::result::{not json",
        "::result::NaN",
        "::result::1e999",
        '::result::{"x": -1e400}',
        "::unknown::1",
        ":: progress::1",
    ],
)
async def test_malformed_protocol_lines_are_logged(line: str) -> None:
    outcome, rec = await run_job(shell('printf "%s\\n" "$LINE"', env={"LINE": line}))

    assert outcome.error is None
    assert rec.lines("stdout") == [line]
    assert rec.of("progress") == rec.of("counts") == rec.of("result") == []
    assert outcome.result is None


async def test_long_lines_are_split_into_bounded_pieces() -> None:
    size = 2 * MAX_LINE_BYTES + 1000
    outcome, rec = await run_job(shell(f"head -c {size} /dev/zero | tr '\\0' a; echo; echo after"))

    pieces = rec.lines("stdout")
    assert outcome.error is None
    assert pieces[-1] == "after"
    assert all(len(piece) <= MAX_LINE_BYTES for piece in pieces)
    assert "".join(pieces[:-1]) == "a" * size


async def test_long_lines_are_split_between_characters() -> None:
    # A piece ends where a character ends, so a long line of UTF-8 text is kept as it was written.
    text = "a" + "é" * MAX_LINE_BYTES
    tail = "€" * (MAX_LINE_BYTES // 2)
    write = f"import sys; sys.stdout.write('a' + 'é' * {MAX_LINE_BYTES} + '\\n' + '€' * {MAX_LINE_BYTES // 2})"
    outcome, rec = await run_job(JobConfig(name="t", command=(sys.executable, "-c", write)))

    pieces = rec.lines("stdout")
    assert outcome.error is None
    assert "\ufffd" not in "".join(pieces)
    assert all(len(piece.encode()) <= MAX_LINE_BYTES + 3 for piece in pieces)  # a character carried over at most
    assert "".join(pieces) == text + tail


async def test_last_line_without_newline_is_kept() -> None:
    outcome, rec = await run_job(shell("printf 'no newline'; printf 'err' >&2"))

    assert outcome.error is None
    assert rec.lines("stdout") == ["no newline"]
    assert rec.lines("stderr") == ["err"]


# --- environment, cwd, stdin ----------------------------------------------------------------


async def test_environment_has_run_variables_and_no_service_manager_ones() -> None:
    environ = {
        **BASE_ENV,
        "FROM_DAEMON": "daemon",
        "SHARED": "daemon",
        "NOTIFY_SOCKET": "/run/notify",
        "WATCHDOG_USEC": "1000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "2",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "a:b",
    }
    job = JobConfig(name="t", command=("env",), env={"FROM_JOB": "job", "SHARED": "job"})
    run = make_run(id=41, attempt=2, params={"a": 1, "b": ["x", None]})

    outcome, rec = await run_job(job, run, environ=environ)

    assert outcome.error is None
    env = dict(line.split("=", 1) for line in rec.lines("stdout"))
    assert env["JOBD_RUN_ID"] == "41"
    assert env["JOBD_JOB"] == "t"
    assert env["JOBD_ATTEMPT"] == "2"
    assert json.loads(env["JOBD_PARAMS"]) == {"a": 1, "b": ["x", None]}
    assert (env["FROM_DAEMON"], env["FROM_JOB"], env["SHARED"]) == ("daemon", "job", "job")
    stripped = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
    assert not stripped & env.keys()


async def test_cwd_and_empty_stdin(tmp_path: Path) -> None:
    outcome, rec = await run_job(shell("pwd -P; cat; echo end", cwd=str(tmp_path)))

    assert outcome.error is None
    assert rec.lines("stdout") == [os.path.realpath(tmp_path), "end"]


# --- exit status and start failures ---------------------------------------------------------


async def test_non_zero_exit_reports_the_last_stderr_line() -> None:
    outcome, rec = await run_job(shell("echo first >&2; echo 'last words' >&2; echo >&2; echo out; exit 3"))

    assert outcome.exit_code == 3
    assert outcome.error == "exit code 3: last words"
    assert rec.lines("stderr") == ["first", "last words", ""]
    assert rec.lines("stdout") == ["out"]


async def test_non_zero_exit_without_stderr() -> None:
    outcome, _ = await run_job(shell("exit 4"))

    assert (outcome.exit_code, outcome.error, outcome.timed_out) == (4, "exit code 4", False)


async def test_death_by_signal_names_the_signal() -> None:
    outcome, _ = await run_job(shell("kill -KILL $$"))

    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.error == "killed by signal SIGKILL"


async def test_shell_mode_runs_through_sh() -> None:
    outcome, rec = await run_job(shell("echo $((40 + 2)) | tr 4 x && echo ok"))

    assert outcome == Outcome(exit_code=0)
    assert rec.lines("stdout") == ["x2", "ok"]


async def test_command_not_found() -> None:
    outcome, rec = await run_job(JobConfig(name="t", command=("jobd-no-such-command", "--flag")))

    assert outcome == Outcome(error="cannot start jobd-no-such-command: command not found")
    assert rec.calls == []


async def test_params_too_big_for_the_environment() -> None:
    outcome, rec = await run_job(shell("true"), make_run(params={"blob": "x" * 200_000}))

    assert outcome == Outcome(
        error="cannot start /bin/sh: argument list too long (the params, as JOBD_PARAMS, may be at most 128 KiB)"
    )
    assert rec.calls == []


async def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    outcome, _ = await run_job(JobConfig(name="t", command=(str(script),)))

    assert outcome.exit_code is None
    assert outcome.error == f"cannot start {script}: Permission denied"


async def test_missing_working_directory(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")

    outcome, _ = await run_job(shell("echo hi", cwd=missing))

    assert outcome.exit_code is None
    assert outcome.error == f"cannot start /bin/sh: working directory {missing}: No such file or directory"


# --- process groups: timeout, cancellation, leftovers ----------------------------------------


@pytest.mark.parametrize("mode, exit_code", [("plain", -signal.SIGTERM), ("stubborn", -signal.SIGKILL)])
async def test_timeout_kills_the_whole_process_group(mode: str, exit_code: int, strays: list[int]) -> None:
    job = JobConfig(name="t", command=(str(SCRIPTS / "grandchild.sh"), mode), timeout_s=0.5)

    outcome, rec = await run_job(job)

    pids = [rec.pid("main"), rec.pid("grandchild")] + ([rec.pid("sibling")] if mode == "stubborn" else [])
    strays.extend(pid for pid in pids if pid)
    assert outcome.timed_out
    assert outcome.error == "timed out after 0.5s"
    assert outcome.exit_code == exit_code
    if mode == "stubborn":
        # SIGTERM went to the whole group, not just the main process.
        assert {"got TERM", "sibling got TERM"} <= set(rec.lines("stdout"))
    await wait_gone(*pids)


async def test_cancellation_kills_the_group_and_reraises(strays: list[int]) -> None:
    rec = Recorder()
    job = JobConfig(name="t", command=(str(SCRIPTS / "grandchild.sh"),))
    task = asyncio.create_task(execute(job, make_run(), rec, kill_grace_s=GRACE, environ=BASE_ENV))
    await rec.wait_for(lambda: rec.pid("grandchild"))
    main, grandchild = rec.pid("main"), rec.pid("grandchild")
    strays.extend([main, grandchild])  # type: ignore[list-item]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await wait_gone(main, grandchild)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_second_cancellation_during_the_grace_kills_at_once(strays: list[int]) -> None:
    rec = Recorder()
    job = JobConfig(name="t", command=(str(SCRIPTS / "grandchild.sh"), "stubborn"))
    task = asyncio.create_task(execute(job, make_run(), rec, kill_grace_s=60, environ=BASE_ENV))
    await rec.wait_for(lambda: rec.pid("grandchild"))
    main, grandchild = rec.pid("main"), rec.pid("grandchild")
    strays.extend([main, grandchild])  # type: ignore[list-item]

    task.cancel()
    await rec.wait_for(lambda: "got TERM" in rec.lines("stdout"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task

    await wait_gone(main, grandchild)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_background_process_holding_stdout_is_killed_after_exit(strays: list[int]) -> None:
    outcome, rec = await run_job(shell('sleep 30 & echo "background $!"; echo done'))

    background = rec.pid("background")
    strays.append(background)  # type: ignore[arg-type]
    assert outcome == Outcome(exit_code=0)
    assert rec.lines("stdout")[-1] == "done"
    await wait_gone(background)


async def test_process_outside_the_group_does_not_hang_execute(strays: list[int]) -> None:
    job = JobConfig(name="t", command=(sys.executable, str(SCRIPTS / "escape.py")))

    outcome, rec = await run_job(job)

    escaped = rec.pid("escaped")
    assert escaped is not None
    strays.append(escaped)
    assert outcome == Outcome(exit_code=0)
    assert not is_gone(escaped)  # out of reach by design; the fixture cleans it up


# --- Python handlers ------------------------------------------------------------------------


def handler_job(name: str, **fields: Any) -> JobConfig:
    return JobConfig(name="t", handler=f"tests.handlers:{name}", **fields)


@pytest.mark.parametrize("name", ["report_async", "report_sync"])
async def test_handler_reports_and_returns(name: str) -> None:
    run = make_run(id=9, attempt=3, params={"n": 1})

    outcome, rec = await run_job(handler_job(name), run)

    assert outcome.error is None and not outcome.timed_out
    result = outcome.result
    thread = result.pop("thread", None)
    assert result == {"params": {"n": 1}, "job": "t", "run_id": 9, "attempt": 3}
    assert rec.calls == [
        ("progress", 25.0, "a quarter"),
        ("counts", {"total": 4, "success": 1}),
        ("log", "handler", "hello 42"),
        ("log", "handler", "two"),
        ("log", "handler", "lines"),
        ("progress", 100.0, None),
    ]
    # Reports from a handler thread still reach the reporter on the loop's thread.
    assert rec.threads == {threading.get_ident()}
    if name == "report_sync":
        assert thread is not None and thread != threading.get_ident()


@pytest.mark.parametrize(
    "name, message", [("fail_async", "ValueError: bad input -1"), ("fail_sync", "ValueError: bad input -2")]
)
async def test_handler_exception_fails_the_run_with_a_traceback(name: str, message: str) -> None:
    outcome, rec = await run_job(handler_job(name))

    assert outcome == Outcome(error=message)
    trace = rec.lines("handler")
    assert "Traceback (most recent call last):" in trace
    assert trace[-1] == message
    assert any(f"in {name}" in line for line in trace)
    assert any("in _check" in line for line in trace)
    assert not any("_call_" in line for line in trace)


async def test_handler_raising_timeout_error_is_not_a_timeout() -> None:
    outcome, _ = await run_job(handler_job("raise_timeout_error", timeout_s=5))

    assert outcome == Outcome(error="TimeoutError: the handler's own timeout")


async def test_handler_calling_sys_exit_only_fails_the_run() -> None:
    outcome, _ = await run_job(handler_job("exit_sync"))

    assert outcome == Outcome(error="SystemExit: 3")


async def test_invalid_report_from_handler_fails_the_run() -> None:
    outcome, rec = await run_job(handler_job("bad_counts"))

    assert outcome.error == "ValueError: counts: success must be an integer from 0 to 999999999999999999, not -1"
    assert rec.of("counts") == []
    outcome, rec = await run_job(handler_job("huge_counts"))
    assert outcome.error == f"ValueError: counts: total must be an integer from 0 to 999999999999999999, not {10**30}"
    assert rec.of("counts") == []


@pytest.mark.parametrize("name", ["return_object", "return_nan"])
async def test_result_must_be_json(name: str) -> None:
    outcome, _ = await run_job(handler_job(name))

    assert outcome.result is None
    assert outcome.error is not None and outcome.error.startswith("result is not JSON serialisable: ")


@pytest.mark.parametrize("name", ["missing", "not_callable"])
async def test_unresolvable_handler(name: str) -> None:
    outcome, rec = await run_job(handler_job(name))

    assert outcome.error is not None and outcome.error.startswith("jobs.t.handler: ")
    assert rec.calls == []


async def test_async_handler_timeout_cancels_it() -> None:
    events: list[str] = []

    outcome, rec = await run_job(handler_job("wait_forever_async", timeout_s=0.3), make_run(params={"events": events}))

    assert outcome == Outcome(timed_out=True, error="timed out after 0.3s")
    assert events == ["cancelled"]


async def test_sync_handler_timeout_sets_cancelled_and_drops_later_reports() -> None:
    stopped = threading.Event()

    outcome, rec = await run_job(
        handler_job("wait_for_cancel_sync", timeout_s=0.3), make_run(params={"stopped": stopped})
    )

    assert outcome == Outcome(timed_out=True, error="timed out after 0.3s")
    assert await asyncio.to_thread(stopped.wait, 5)
    assert rec.lines("handler") == ["started"]


async def test_cancelling_an_async_handler() -> None:
    events: list[str] = []
    rec = Recorder()
    run = make_run(params={"events": events})
    task = asyncio.create_task(execute(handler_job("wait_forever_async"), run, rec, kill_grace_s=GRACE, environ={}))
    await rec.wait_for(lambda: rec.lines("handler"))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert events == ["cancelled"]


async def test_cancelling_a_sync_handler_sets_cancelled() -> None:
    stopped = threading.Event()
    rec = Recorder()
    run = make_run(params={"stopped": stopped})
    task = asyncio.create_task(execute(handler_job("wait_for_cancel_sync"), run, rec, kill_grace_s=GRACE, environ={}))
    await rec.wait_for(lambda: rec.lines("handler"))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await asyncio.to_thread(stopped.wait, 5)
    assert rec.lines("handler") == ["started"]


# --- RunLog ---------------------------------------------------------------------------------


def test_runlog_creates_no_file_for_a_silent_run(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "logs" / "1.log", max_bytes=1024, tail_bytes=1024)
    log.close()

    assert not (tmp_path / "logs").exists()
    assert log.tail() == ""


def test_runlog_writes_plain_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "1.log"
    log = RunLog(path, max_bytes=1024, tail_bytes=1024)
    log.write("stdout", "out")
    log.write("stderr", "err")
    log.write("handler", "héllo")
    log.close()

    expected = "out\n[stderr] err\nhéllo\n"
    assert path.read_text(encoding="utf-8") == expected
    assert log.tail() == expected


def test_runlog_truncates_the_file_but_keeps_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    log = RunLog(path, max_bytes=100, tail_bytes=30)
    for number in range(30):
        log.write("stdout", f"line {number:04d}")  # 10 bytes with the newline
    log.close()

    assert path.read_text() == "".join(f"line {n:04d}\n" for n in range(10)) + "... log truncated at 100 bytes\n"
    assert log.truncated
    assert log.tail() == "line 0027\nline 0028\nline 0029\n"


def test_runlog_tail_keeps_the_end_of_an_oversized_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "1.log", max_bytes=10_000, tail_bytes=20)
    log.write("stdout", "short")
    log.write("stdout", "é" * 30 + "END")
    log.close()

    tail = log.tail()
    assert len(tail.encode()) <= 20
    assert tail.endswith("éEND\n")


@given(
    st.lists(st.tuples(st.sampled_from(["stdout", "stderr", "handler"]), st.text(max_size=40)), max_size=40),
    st.integers(min_value=1, max_value=120),
)
def test_runlog_tail_is_the_longest_fitting_suffix_of_whole_lines(
    lines: list[tuple[str, str]], tail_bytes: int
) -> None:
    log = RunLog(Path("/nonexistent/never-written.log"), max_bytes=0, tail_bytes=tail_bytes)
    log.close()  # after close only the tail is kept: no file is touched
    rendered = [(f"[stderr] {line}\n" if stream == "stderr" else f"{line}\n") for stream, line in lines]
    for stream, line in lines:
        log.write(stream, line)

    tail = log.tail()
    size = len(tail.encode("utf-8", errors="replace"))
    assert size <= tail_bytes
    assert "".join(rendered).endswith(tail)
    # Nothing is dropped that would have fitted: at least the longest suffix of whole lines is kept.
    fitting = 0
    for text in reversed(rendered):
        if fitting + len(text.encode("utf-8", errors="replace")) > tail_bytes:
            break
        fitting += len(text.encode("utf-8", errors="replace"))
    assert size >= fitting
    if rendered and not fitting:  # the last line alone is too long: its end is kept
        assert tail.endswith("\n") and size > tail_bytes - 4


def test_format_seconds() -> None:
    assert [format_seconds(value) for value in (5.0, 0.3, 1.25, 3600, 0.001)] == [
        "5s",
        "0.3s",
        "1.25s",
        "3600s",
        "0.001s",
    ]
