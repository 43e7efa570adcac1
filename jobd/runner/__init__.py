"""Run one job once and report what happens.

`execute()` starts a command (in its own process group) or calls a Python handler, feeds
progress, counts, results and log lines to a `RunReporter` as they come, and returns an
`Outcome`. It knows nothing about the store, the queue or HTTP: the worker pool does.

Commands talk back through stdout lines (`protocol`); lines longer than MAX_LINE_BYTES are
split into pieces of that size (`pipes`). `commands` runs a command in its process group,
`handlers` calls a Python handler with a `RunContext` (`context`).
"""

from __future__ import annotations

from collections.abc import Mapping

from jobd.config import JobConfig
from jobd.models import Run
from jobd.runner.commands import run_command
from jobd.runner.context import RunContext
from jobd.runner.credentials import CredentialError, read_secret_env
from jobd.runner.environment import command_env
from jobd.runner.handlers import LEFT_BEHIND, run_handler
from jobd.runner.pipes import MAX_LINE_BYTES, PIPE_DRAIN_S
from jobd.runner.protocol import MAX_ERROR_DETAIL
from jobd.runner.reporting import COUNT_FIELDS, MAX_COUNT, Outcome, RunReporter, format_seconds
from jobd.runner.secrets import RedactingReporter, hidden_texts, redact_outcome
from jobd.runner.waiting import ended

__all__ = [
    "COUNT_FIELDS",
    "LEFT_BEHIND",
    "MAX_COUNT",
    "MAX_ERROR_DETAIL",
    "MAX_LINE_BYTES",
    "PIPE_DRAIN_S",
    "Outcome",
    "RunContext",
    "RunReporter",
    "command_env",
    "ended",
    "execute",
    "format_seconds",
]


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
    try:
        secret_env = read_secret_env(job.secret_env, environ) if job.secret_env else {}
    except CredentialError as unreadable:
        return Outcome(error=str(unreadable))
    secrets = hidden_texts(job.params.secret_values(run.params), secret_env.values())
    if secrets:
        reporter = RedactingReporter(reporter, secrets)
    if job.kind == "python":
        outcome = await run_handler(job, run, reporter, grace_s=kill_grace_s, secrets=secret_env)
    else:
        # Over jobd's own variables, under the job's env (config refuses a name in both) and JOBD_*.
        child_environ = {**environ, **secret_env} if secret_env else environ
        outcome = await run_command(job, run, reporter, kill_grace_s=kill_grace_s, environ=child_environ)
    return redact_outcome(outcome, secrets) if secrets else outcome
