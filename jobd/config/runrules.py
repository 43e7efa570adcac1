"""A job's rules about its runs' timing and failures: late and long-run alerts, too-short runs,
pausing after failures, and which failures are retried (see docs/scheduling.md#late-long-and-short-runs)."""

from __future__ import annotations

import dataclasses

from jobd.config.errors import ConfigError
from jobd.config.handlers import import_handler
from jobd.config.table import Table, type_name
from jobd.models import Run, RunStatus

# The start of a too-short run's error (it ends PARTIAL): the notification plan looks for it.
TOO_SHORT = "too short: "


@dataclasses.dataclass(frozen=True, slots=True)
class RunRules:
    late_after_s: float | None = None  # a scheduled fire not started this long after its time is late
    max_duration_s: float | None = None  # alert (not kill) past this
    max_duration_p95_factor: float | None = None  # alert past factor × the job's p95 duration
    min_duration_s: float | None = None  # a success faster than this is flagged too_short
    pause_after_failures: int | None = None
    retry_on_exit_codes: tuple[int, ...] | None = None  # only these exit codes are retried
    no_retry_on_exit_codes: tuple[int, ...] = ()  # these exit codes are not retried
    retry_on_exceptions: tuple[type[BaseException], ...] | None = None  # Python handlers: only these

    @property
    def watches_long(self) -> bool:
        return self.max_duration_s is not None or self.max_duration_p95_factor is not None

    def retryable(self, exit_code: int | None, raised: BaseException | None) -> bool:
        """Whether a failure with this exit code (commands) or exception (handlers) may be retried.
        A failure with neither (a timeout, a handler's non-JSON result) matches no list."""
        if self.retry_on_exit_codes is not None and exit_code not in self.retry_on_exit_codes:
            return False
        if exit_code is not None and exit_code in self.no_retry_on_exit_codes:
            return False
        return self.retry_on_exceptions is None or isinstance(raised, self.retry_on_exceptions)


NO_RULES = RunRules()


def pauses(rules: RunRules, before: int, after: int) -> bool:
    """Whether a failure streak going from `before` to `after` reaches `pause_after_failures`
    (again: a job resumed while failing pauses after as many more). The backends pause the job,
    and the notification plan notifies it, in the transaction of the failure's end."""
    limit = rules.pause_after_failures
    return limit is not None and after // limit > before // limit


def pause_reason(rules: RunRules, streak: int) -> str:
    return f"{streak} consecutive failures (pause_after_failures {rules.pause_after_failures})"


def is_too_short(run: Run) -> bool:
    return run.status is RunStatus.PARTIAL and (run.error or "").startswith(TOO_SHORT)


def parse_rules(t: Table, *, scheduled: bool, python: bool) -> RunRules:
    late = t.number("late_after_s", None, minimum=0.001)
    if late is not None and not scheduled:
        raise ConfigError(f"{t.key('late_after_s')}: only a job with a schedule can be late")
    factor = t.number("max_duration_p95_factor", None, minimum=1.0, maximum=1000.0)
    only = _codes(t, "retry_on_exit_codes")
    never = _codes(t, "no_retry_on_exit_codes")
    if only is not None and never is not None:
        raise ConfigError(
            f"{t.key('no_retry_on_exit_codes')}: give retry_on_exit_codes or no_retry_on_exit_codes, not both"
        )
    exceptions = _exceptions(t, python)
    pause = t.get("pause_after_failures", (int,), None, "an integer")
    if pause is not None and not 1 <= pause <= 1_000_000:
        raise ConfigError(f"{t.key('pause_after_failures')}: {pause} is out of range (must be from 1 to 1000000)")
    rules = RunRules(
        late_after_s=late,
        max_duration_s=t.number("max_duration_s", None, minimum=0.001),
        max_duration_p95_factor=factor,
        min_duration_s=t.number("min_duration_s", None, minimum=0.001),
        pause_after_failures=pause,
        retry_on_exit_codes=only,
        no_retry_on_exit_codes=never or (),
        retry_on_exceptions=exceptions,
    )
    return NO_RULES if rules == NO_RULES else rules  # one shared object for the many jobs without rules


def _codes(t: Table, name: str) -> tuple[int, ...] | None:
    if not t.has(name):
        t.get(name, (list,), None, "a list of exit codes")  # marks it read
        return None
    value = t.get(name, (list,), [], "a list of exit codes")
    for index, code in enumerate(value):
        if isinstance(code, bool) or not isinstance(code, int):
            raise ConfigError(f"{t.key(name)}[{index}]: must be an exit code (an integer), not {type_name(code)}")
        if not 0 <= code <= 255:
            raise ConfigError(f"{t.key(name)}[{index}]: {code} is not an exit code (0 to 255)")
    return tuple(value)


def _exceptions(t: Table, python: bool) -> tuple[type[BaseException], ...] | None:
    name = "retry_on_exceptions"
    if not t.has(name):
        t.get(name, (list,), None, "a list")
        return None
    if not python:
        raise ConfigError(f"{t.key(name)}: only a job with a Python handler raises exceptions")
    classes: list[type[BaseException]] = []
    for index, spec in enumerate(t.strings(name)):
        key = f"{t.key(name)}[{index}]"
        if ":" not in spec:
            raise ConfigError(f"{key}: {spec!r} must look like 'package.module:Class'")
        found = import_handler(spec, key)
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise ConfigError(f"{key}: {spec!r} is not an exception class")
        classes.append(found)
    return tuple(classes)
