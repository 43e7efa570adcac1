"""Run one job once and report what happens.

`execute()` starts a command (in its own process group) or calls a Python handler, feeds
progress, counts, results and log lines to a `RunReporter` as they come, and returns an
`Outcome`. It knows nothing about the store, the queue or HTTP: the worker pool does.

Commands talk back through stdout lines:

    ::progress::42 optional message      percent 0-100 (clamped), message optional
    ::counts::total=50 success=46 failed=2 skipped=2   any subset of the four
    ::result::{"any": "JSON"}           the last one becomes the run's result

Every other stdout line, and every malformed protocol line, is a log line. Lines longer
than MAX_LINE_BYTES are split into pieces of that size.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import errno
import functools
import inspect
import json
import math
import os
import signal
import subprocess
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

from jobd.config import ConfigError, JobConfig
from jobd.models import Run, loads_standard
from jobd.systemd import clean_child_environ

MAX_LINE_BYTES = 64 * 1024
MAX_COUNT = 10**18 - 1  # counts fit a 64-bit column: 18 digits, from a command or a handler
# After the process group is gone its pipes reach EOF at once; only a process that left the
# group (setsid) can hold them open. Wait this long for EOF, then stop reading anyway.
PIPE_DRAIN_S = 1.0
MAX_ERROR_DETAIL = 500
LEFT_BEHIND = "the handler ignored its cancellation and was left behind"
COUNT_FIELDS = ("total", "success", "failed", "skipped")


class RunReporter(Protocol):
    """Where a run's live output goes; implemented by the worker pool.

    Always called on the event loop's thread, also for handlers running in a thread.
    The methods should not raise: an exception ends the reading of that run's output.
    """

    def progress(self, percent: float, message: str | None) -> None: ...

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        """Only the fields given (not None) change."""

    def result(self, value: Any) -> None: ...

    def log(self, line: str, stream: str) -> None:
        """`stream` is "stdout", "stderr" or "handler"."""


@dataclasses.dataclass(slots=True)
class Outcome:
    exit_code: int | None = None  # commands only
    result: Any = None
    error: str | None = None  # None when the run succeeded
    timed_out: bool = False


async def execute(
    job: JobConfig,
    run: Run,
    reporter: RunReporter,
    *,
    kill_grace_s: float,
    environ: Mapping[str, str],
) -> Outcome:
    """Run `job` once for `run`. Failures of the job come back in the Outcome, never as exceptions.

    Cancelling the task that awaits this stops the run (commands: SIGTERM to the process group,
    SIGKILL after `kill_grace_s`; async handlers: cancelled, and left behind after `kill_grace_s`
    if they ignore it) and then re-raises CancelledError. A timeout stops the run the same way.
    """
    if job.kind == "python":
        return await _run_handler(job, run, reporter, grace_s=kill_grace_s)
    return await _run_command(job, run, reporter, kill_grace_s=kill_grace_s, environ=environ)


def command_env(job: JobConfig, run: Run, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a command runs with: the daemon's, minus service-manager variables, plus the job's and JOBD_*."""
    env = clean_child_environ(environ)
    env.update(job.env)
    env.update(
        JOBD_RUN_ID=str(run.id),
        JOBD_JOB=job.name,
        JOBD_ATTEMPT=str(run.attempt),
        JOBD_PARAMS=json.dumps(run.params, separators=(",", ":")),
    )
    return env


def format_seconds(seconds: float) -> str:
    """5.0 → "5s", 0.25 → "0.25s"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


# --- commands -------------------------------------------------------------------------------


async def _run_command(
    job: JobConfig,
    run: Run,
    reporter: RunReporter,
    *,
    kill_grace_s: float,
    environ: Mapping[str, str],
) -> Outcome:
    argv = list(job.command) if job.command is not None else ["/bin/sh", "-c", job.shell or ""]
    output = _CommandOutput(reporter)
    pipes: list[_Pipe] = []
    try:
        for _ in ("stdout", "stderr"):
            pipes.append(await _Pipe.open())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=pipes[0].write_fd,
                stderr=pipes[1].write_fd,
                cwd=job.cwd,
                env=command_env(job, run, environ),
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            return Outcome(error=_spawn_error(exc, argv[0], job.cwd))
        finally:
            # The child has its own copies; ours must go or the pipes never reach EOF.
            for pipe in pipes:
                pipe.close_write_end()
        readers = [
            asyncio.create_task(_read_lines(pipes[0].reader, output.stdout_line)),
            asyncio.create_task(_read_lines(pipes[1].reader, output.stderr_line)),
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
            await _finish_readers(readers)
    finally:
        for pipe in pipes:
            pipe.close()

    code = proc.returncode
    if timed_out:
        error: str | None = f"timed out after {format_seconds(job.timeout_s or 0)}"
    else:
        error = _exit_error(code, output.last_stderr)
    return Outcome(exit_code=code, result=output.result, error=error, timed_out=timed_out)


class _Pipe:
    """One output pipe of a child. Owning the read end (rather than asyncio's PIPE) lets us close
    it even while a process that escaped the group still holds the write end."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport, write_fd: int) -> None:
        self.reader = reader
        self.transport = transport
        self.write_fd: int | None = write_fd

    @classmethod
    async def open(cls) -> _Pipe:
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        try:
            read_file: IO[bytes] = open(read_fd, "rb", buffering=0)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), read_file
            )
        except BaseException:
            read_file.close()
            os.close(write_fd)
            raise
        return cls(reader, transport, write_fd)

    def close_write_end(self) -> None:
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def close(self) -> None:
        self.close_write_end()
        self.transport.close()


async def _read_lines(reader: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    carry = b""  # the start of a character that a piece of a long line cut in two
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # EOF; the last line may lack its newline
            if carry or exc.partial:
                on_line(_decode(carry + exc.partial))
            return
        except asyncio.LimitOverrunError:
            # No newline within the limit: hand on one piece, ending between characters; the rest
            # follows as further lines.
            piece = carry + await reader.read(MAX_LINE_BYTES)
            cut = _whole_characters(piece)
            carry = piece[cut:]
            on_line(piece[:cut].decode("utf-8", errors="replace"))
            continue
        if carry:
            raw, carry = carry + raw, b""
        on_line(_decode(raw))


def _whole_characters(data: bytes) -> int:
    """Where `data` stops holding whole UTF-8 characters: its length, or the start of a last
    character whose remaining bytes have not been read yet."""
    start = len(data) - 1
    while start >= max(0, len(data) - 4) and data[start] & 0xC0 == 0x80:  # continuation bytes
        start -= 1
    if start < 0 or data[start] < 0xC0:
        return len(data)
    needed = 2 if data[start] < 0xE0 else 3 if data[start] < 0xF0 else 4
    return start if len(data) - start < needed else len(data)


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    """Let the readers reach EOF (bounded), then make sure none is left running."""
    try:
        await asyncio.wait(readers, timeout=PIPE_DRAIN_S)
    finally:
        for task in readers:
            task.cancel()
        results = await asyncio.gather(*readers, return_exceptions=True)
    for item in results:
        if isinstance(item, Exception):  # a failing reporter is a bug of the caller: show it
            raise item


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


def _spawn_error(exc: OSError | ValueError, program: str, cwd: str | None) -> str:
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


class _CommandOutput:
    """Turns a command's output lines into reporter calls."""

    def __init__(self, reporter: RunReporter) -> None:
        self.reporter = reporter
        self.result: Any = None
        self.last_stderr: str | None = None

    def stdout_line(self, line: str) -> None:
        if not self._protocol(line):
            self.reporter.log(line, "stdout")

    def stderr_line(self, line: str) -> None:
        if line.strip():
            self.last_stderr = _shorten(line.strip())
        self.reporter.log(line, "stderr")

    def _protocol(self, line: str) -> bool:
        """Handle a valid protocol line; False for anything else (which is then logged)."""
        if line.startswith("::progress::"):
            return self._progress(line[len("::progress::") :])
        if line.startswith("::counts::"):
            return self._counts(line[len("::counts::") :])
        if line.startswith("::result::"):
            return self._result(line[len("::result::") :])
        return False

    def _progress(self, text: str) -> bool:
        parts = text.split(None, 1)
        try:
            percent = float(parts[0])
        except (IndexError, ValueError):
            return False
        if math.isnan(percent):
            return False
        message = parts[1].strip() if len(parts) > 1 else None
        self.reporter.progress(min(100.0, max(0.0, percent)), message or None)
        return True

    def _counts(self, text: str) -> bool:
        values: dict[str, int] = {}
        for item in text.split():
            key, sep, number = item.partition("=")
            if not sep or key not in COUNT_FIELDS or not _is_count(number):
                return False
            values[key] = int(number)
        if not values:
            return False
        self.reporter.counts(**values)
        return True

    def _result(self, text: str) -> bool:
        try:
            value = loads_standard(text)
        except ValueError:
            return False
        self.result = value
        self.reporter.result(value)
        return True


def _is_count(text: str) -> bool:
    # ASCII digits only, and small enough for a 64-bit column (at most MAX_COUNT).
    return text.isascii() and text.isdigit() and len(text) <= 18


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_DETAIL else text[: MAX_ERROR_DETAIL - 1] + "…"


# --- Python handlers ------------------------------------------------------------------------


class RunContext:
    """The first argument of a Python handler, which is called as ``handler(ctx, params)``.

    Attributes:
        run_id:  the run's id (int).
        job:     the job's name.
        attempt: 1 for the first try, 2, 3, … for retries.
        params:  the run's parameters (the same dict as the second argument).
        cancelled: True once the run has timed out or been cancelled (read-only).

    Methods (each may be called from the event loop or from the handler's own thread):
        progress(percent, message=None)  percent 0-100, clamped; message optional.
        counts(total=None, success=None, failed=None, skipped=None)
                                         non-negative ints; only those given change.
        log(*parts)                      one log line, parts joined by spaces like print().

    Async handlers run on the daemon's event loop and are cancelled on timeout or cancellation; one
    that ignores its cancellation is left behind after `workers.kill_grace_s` (the run ends anyway).
    Plain functions run in a thread of their own, which cannot be interrupted: a long one should check
    `ctx.cancelled` now and then and return when it becomes True. Reports made after the run
    has ended are dropped.
    """

    def __init__(self, run: Run, job: JobConfig, reporter: RunReporter, loop: asyncio.AbstractEventLoop) -> None:
        self.run_id = run.id
        self.job = job.name
        self.attempt = run.attempt
        self.params = run.params
        self._reporter = reporter
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cancelled = False
        self._finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def progress(self, percent: float, message: str | None = None) -> None:
        value = float(percent)
        if math.isnan(value):
            raise ValueError("progress: percent is NaN")
        text = None if message is None else _utf8(str(message))
        self._post(self._reporter.progress, min(100.0, max(0.0, value)), text)

    def counts(
        self,
        total: int | None = None,
        success: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        given = {
            name: value for name, value in zip(COUNT_FIELDS, (total, success, failed, skipped)) if value is not None
        }
        for name, value in given.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
                raise ValueError(f"counts: {name} must be an integer from 0 to {MAX_COUNT}, not {value!r}")
        self._post(self._send_counts, given)

    def log(self, *parts: object) -> None:
        text = _utf8(" ".join(str(part) for part in parts))
        self._post(self._send_lines, text.splitlines() or [""])

    def _send_counts(self, values: dict[str, int]) -> None:
        self._reporter.counts(**values)

    def _send_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._reporter.log(line, "handler")

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._finished:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, fn, args)
        except RuntimeError:  # the loop is closed: the run is long over
            pass

    def _deliver(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self._finished:
            fn(*args)

    def _stop(self, *, cancelled: bool) -> None:
        self._cancelled = self._cancelled or cancelled
        self._finished = True


async def ended(task: asyncio.Future[Any], timeout: float | None = None) -> bool:
    """Wait until `task` is done, whatever its outcome (True), or for `timeout` seconds (False);
    being cancelled leaves the task running. What asyncio.wait({task}, timeout=...) does, at a
    fraction of its cost per run: that checks each argument for being a coroutine (through an ABC
    for a task), copies the set, and registers and removes a callback of its own."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    task.add_done_callback(functools.partial(_settle, waiter, True))
    if timeout is None:
        return await waiter
    timer = loop.call_later(timeout, _settle, waiter, False, None)
    try:
        return await waiter
    finally:
        timer.cancel()


def _settle(waiter: asyncio.Future[bool], value: bool, _: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)


async def _run_handler(job: JobConfig, run: Run, reporter: RunReporter, *, grace_s: float) -> Outcome:
    try:
        handler = job.resolve_handler()
    except ConfigError as exc:
        return Outcome(error=str(exc))
    loop = asyncio.get_running_loop()
    ctx = RunContext(run, job, reporter, loop)
    # loop.create_task(): ensure_future() first works out what it was given, ~1 us a run.
    if _is_async(handler):
        call = loop.create_task(_call_async(handler, ctx, run.params))
    else:
        call = loop.create_task(_in_daemon_thread(_call_sync, handler, ctx, run.params, name=f"run-{run.id}"))
    cancelled, stopping = True, False
    try:
        if not await ended(call, job.timeout_s):
            stopping = True
            error = f"timed out after {format_seconds(job.timeout_s or 0)}"
            if not await _stop_call(call, grace_s):
                error += "; " + LEFT_BEHIND
            return Outcome(timed_out=True, error=error)
        value, exc = call.result()
        cancelled = False
    except asyncio.CancelledError:
        # Cancelled again while stopping: it is left behind at once.
        if not stopping and not await _stop_call(call, grace_s):
            reporter.log(LEFT_BEHIND, "handler")
        raise
    finally:
        ctx._stop(cancelled=cancelled)

    if exc is not None:
        _log_traceback(reporter, exc)
        message = _utf8(str(exc))
        return Outcome(error=f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    try:
        if value is not None:
            _strict_json(value)
    except (TypeError, ValueError) as json_exc:
        return Outcome(error=f"result is not JSON serialisable: {json_exc}")
    return Outcome(result=value)


async def _stop_call(call: asyncio.Future[Any], grace_s: float) -> bool:
    """Cancel a handler's call and give it `grace_s` to end; False when it is still running.

    A coroutine that swallows its cancellation cannot be killed like a process; after the grace
    the run stops waiting for it (as for a thread, which cannot be interrupted at all), so that
    it does not hold its worker, or a cancel request, forever. Its reports are dropped from then on.
    """
    call.cancel()
    try:
        await ended(call, grace_s)
    finally:
        if not call.done():
            call.add_done_callback(_ignore_outcome)
    return call.done()


def _ignore_outcome(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved, so that a late failure is not reported as never retrieved


_strict_json = json.JSONEncoder(allow_nan=False).encode  # one encoder, not one per json.dumps() call


@functools.lru_cache(maxsize=4096)  # inspected once per handler, not once per run
def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 (an object whose __call__ is async)


# The two callers return the handler's exception instead of raising it, so that a handler's own
# TimeoutError is never mistaken for the run's timeout, and so its traceback starts here.
async def _call_async(fn: Callable[..., Any], ctx: RunContext, params: Any) -> tuple[Any, BaseException | None]:
    try:
        return await fn(ctx, params), None
    except (Exception, SystemExit) as exc:
        return None, exc


def _call_sync(fn: Callable[..., Any], ctx: RunContext, params: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(ctx, params), None
    except (Exception, SystemExit) as exc:
        return None, exc


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any, name: str) -> Any:
    """Like asyncio.to_thread, on a daemon thread of its own. A plain function cannot be stopped:
    when its run is interrupted it is abandoned, and a daemon thread, unlike the default
    executor's, does not hold up jobd's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, exc: BaseException | None) -> None:
        if future.done():  # the run was cancelled or timed out meanwhile
            return
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    def target() -> None:
        value, exc = None, None
        try:
            value = context.run(fn, *args)
        except BaseException as caught:  # handed to the awaiting task, like to_thread does
            exc = caught
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop has closed: nobody waits for this run any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def _log_traceback(reporter: RunReporter, exc: BaseException) -> None:
    handler_frames = exc.__traceback__.tb_next if exc.__traceback__ else None  # skip _call_*
    for chunk in traceback.format_exception(type(exc), exc, handler_frames):
        for line in _utf8(chunk).rstrip("\n").split("\n"):
            reporter.log(line, "handler")


def _utf8(text: str) -> str:
    """A handler's text as UTF-8 can hold it: a lone surrogate, which the store cannot take (the
    run's end could not be committed), is written as its escape, \\udcff."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text
