"""jobd.runner.commands: environment, exit status, start failures, process groups."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from jobd.config import JobConfig
from jobd.runner import Outcome, execute, format_seconds
from tests.runner_helpers import (
    BASE_ENV,
    GRACE,
    SCRIPTS,
    Recorder,
    is_gone,
    make_run,
    run_job,
    shell,
    strays,  # noqa: F401 (a fixture)
    wait_gone,
)

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


def test_format_seconds() -> None:
    assert [format_seconds(value) for value in (5.0, 0.3, 1.25, 3600, 0.001)] == [
        "5s",
        "0.3s",
        "1.25s",
        "3600s",
        "0.001s",
    ]
