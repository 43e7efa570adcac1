"""Commands: each run in a process group of its own, stopped as a group on timeout or cancel."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
from collections.abc import Mapping

from jobd.config import JobConfig
from jobd.models import Run
from jobd.runner.confine import ConfineError, confine
from jobd.runner.environment import command_env
from jobd.runner.pipes import Pipe, finish_readers, read_lines
from jobd.runner.protocol import CommandOutput
from jobd.runner.reporting import Outcome, RunReporter, timeout_error


async def run_command(
    job: JobConfig,
    run: Run,
    reporter: RunReporter,
    *,
    kill_grace_s: float,
    environ: Mapping[str, str],
) -> Outcome:
    argv = list(job.command) if job.command is not None else ["/bin/sh", "-c", job.shell or ""]
    output = CommandOutput(reporter)
    try:
        confinement = confine(job, run.id)
    except ConfineError as exc:
        return Outcome(error=str(exc))
    if confinement.warning is not None:
        reporter.log(f"jobd: {confinement.warning}", "stderr")
    pipes: list[Pipe] = []
    try:
        for _ in ("stdout", "stderr"):
            pipes.append(await Pipe.open())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=pipes[0].write_fd,
                stderr=pipes[1].write_fd,
                cwd=job.cwd,
                env=confinement.environment(command_env(job, run, environ), job.env),
                start_new_session=True,
                **confinement.popen_kwargs(),
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return Outcome(error=_spawn_error(exc, argv[0], job.cwd))
        finally:
            confinement.spawned()
            # The child has its own copies; ours must go or the pipes never reach EOF.
            for pipe in pipes:
                pipe.close_write_end()
        readers = [
            asyncio.create_task(read_lines(pipes[0].reader, output.stdout_line)),
            asyncio.create_task(read_lines(pipes[1].reader, output.stderr_line)),
        ]
        timed_out = False
        try:
            try:
                async with asyncio.timeout(job.timeout_s):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                await _terminate_group(proc, kill_grace_s)
            except asyncio.CancelledError:
                await _terminate_group(proc, kill_grace_s)
                raise
        finally:
            # Whatever the main process left running in its group would hold the pipes open.
            _signal_group(proc.pid, signal.SIGKILL)
            await finish_readers(readers)
    finally:
        for pipe in pipes:
            pipe.close()
        problem = await confinement.release()
        if problem is not None:
            reporter.log(f"jobd: {problem}", "stderr")

    code = proc.returncode
    if timed_out:
        error: str | None = timeout_error(job.timeout_s)
    else:
        error = _exit_error(code, output.last_stderr)
    error = confinement.error(error, timed_out)
    return Outcome(exit_code=code, result=output.result, error=error, timed_out=timed_out)


async def _terminate_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the group, give the main process `grace_s` to exit, then SIGKILL the group."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        pass
    finally:
        # Also reached when cancelled again while waiting: never leave the group running.
        _signal_group(proc.pid, signal.SIGKILL)
        await _reap(proc)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed process even through further cancellations (it dies at once), so that
    it is never left unreaped; a cancellation that came meanwhile is raised afterwards."""
    waiter = asyncio.ensure_future(proc.wait())
    cancelled = False
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _signal_group(pgid: int, signum: int) -> None:
    # Safe after the leader was reaped: a group id cannot be reused while any member lives.
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the whole group has already exited
        pass


def _spawn_error(exc: OSError | ValueError | subprocess.SubprocessError, program: str, cwd: str | None) -> str:
    if isinstance(exc, subprocess.SubprocessError):  # the child could not enter its cgroup
        return f"cannot start {program}: cannot enter the run's cgroup ({exc})"
    if isinstance(exc, ValueError):  # e.g. a NUL byte in an argument or variable
        return f"cannot start {program}: {exc}"
    reason = exc.strerror or str(exc)
    if cwd is not None and exc.filename == cwd:
        return f"cannot start {program}: working directory {cwd}: {reason}"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start {program}: command not found"
    if exc.errno == errno.E2BIG:
        return f"cannot start {program}: argument list too long (the params, as JOBD_PARAMS, may be at most 128 KiB)"
    return f"cannot start {program}: {reason}"


def _exit_error(code: int | None, last_stderr: str | None) -> str | None:
    if code == 0:
        return None
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        text = f"killed by signal {name}"
    else:
        text = f"exit code {code}"
    return f"{text}: {last_stderr}" if last_stderr else text
