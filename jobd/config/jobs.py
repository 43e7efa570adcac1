"""One job's table, `[jobs.NAME]`, checked and turned into its JobConfig (the keys of each
concern are read by their own module: calendars, chains, groups, limits, notifiers, params,
run rules, secret_env)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobd import cronspec
from jobd.calendars import Calendar
from jobd.config.calendars import parse_window
from jobd.config.chains import parse_chain
from jobd.config.errors import ConfigError
from jobd.config.groups import MAX_PRIORITY, MIN_PRIORITY, job_groups
from jobd.config.limits import parse_limits, parse_run_as
from jobd.config.notifiers import NotifierConfig, NotifyRules, parse_notify
from jobd.config.params import parse_params
from jobd.config.runrules import parse_rules
from jobd.config.secret_env import SecretSource, parse_secret_env
from jobd.config.sections import (
    JOB_NAME,
    MAX_CATCHUP_RUNS,
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    AlertsConfig,
    JobConfig,
    SchedulerConfig,
)
from jobd.config.table import Table, type_name


def parse_zone(t: Table, name: str, default: str) -> str:
    zone = t.string(name, default)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{t.key(name)}: {zone!r} is not a known time zone") from None
    return zone


_JOB_DEFAULTS = JobConfig(name="defaults")  # one, not one per job: 10,000 jobs are parsed at start


def parse_job(
    name: str,
    t: Table,
    scheduler: SchedulerConfig,
    alerts: AlertsConfig,
    base_dir: Path,
    calendars: Mapping[str, Calendar],
    notifiers: Mapping[str, NotifierConfig],
    notify: NotifyRules,
    secret_env: tuple[SecretSource, ...],
) -> JobConfig:
    if not JOB_NAME.match(name):
        raise ConfigError(
            f"{t.path}: job names use letters, digits, '_', '-', '.' (at most 128, not starting with punctuation)"
        )
    command = t.strings("command") if t.has("command") else None
    shell = t.string("shell")
    handler = t.string("handler")
    given = [key for key, value in (("command", command), ("shell", shell), ("handler", handler)) if value is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise ConfigError(f"{t.path}: a job needs exactly one of command, shell or handler (found {what})")
    if command is not None and not command:
        raise ConfigError(f"{t.key('command')}: must not be empty")
    if command and not command[0]:
        raise ConfigError(f"{t.key('command')}: the program (its first item) must not be empty")
    if shell is not None and not shell.strip():
        raise ConfigError(f"{t.key('shell')}: must not be empty")
    env = t.get("env", (dict,), {}, "a table of strings")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise ConfigError(f"{t.key('env')}: {key!r} is not a valid name for an environment variable")
        if not isinstance(value, str):
            raise ConfigError(f"{t.key('env')}.{key}: must be a string, not {type_name(value)}")
        if "\0" in value:
            raise ConfigError(f"{t.key('env')}.{key}: must not contain a NUL character")
    cwd = t.string("cwd")
    if cwd is not None and not Path(cwd).is_absolute():
        cwd = str((base_dir / cwd).resolve())
    zone = parse_zone(t, "timezone", scheduler.timezone)
    schedule = t.string("schedule")
    if schedule is not None:
        try:
            cronspec.CronSpec.parse(schedule, name)
        except ValueError as exc:
            raise ConfigError(f"{t.key('schedule')}: {schedule!r} is not a valid cron expression ({exc})") from None
    d = _JOB_DEFAULTS
    job = JobConfig(
        name=name,
        command=command,
        shell=shell,
        handler=handler,
        cwd=cwd,
        env=dict(env),
        schedule=schedule,
        timezone=zone,
        timeout_s=t.number("timeout_s", None, minimum=0.001),
        retries=t.integer("retries", d.retries, minimum=0, maximum=100),
        retry_backoff_s=t.number("retry_backoff_s", d.retry_backoff_s),
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, minimum=1),
        overlap=t.string("overlap", d.overlap, choices=OVERLAP_POLICIES),
        misfire=t.string("misfire", d.misfire, choices=MISFIRE_POLICIES),
        misfire_grace_s=t.number("misfire_grace_s", d.misfire_grace_s),
        max_catchup_runs=t.integer("max_catchup_runs", d.max_catchup_runs, minimum=1, maximum=MAX_CATCHUP_RUNS),
        jitter_s=t.number("jitter_s", d.jitter_s),
        on_interrupt=t.string("on_interrupt", d.on_interrupt, choices=("retry", "fail")),
        alert_after_failures=t.integer("alert_after_failures", alerts.alert_after_failures, minimum=1),
        alert_webhook=alerts.webhook_url is not None,
        description=t.string("description", ""),
        window=parse_window(t, zone, schedule, calendars),
        params=parse_params(t.table("params"), scheduled=schedule is not None),
        notify=parse_notify(t, notifiers, notify),
        secret_env=parse_secret_env(t, base_dir, secret_env, env=env),
        chain=parse_chain(t),
        groups=job_groups(t),
        priority=t.integer("priority", d.priority, minimum=MIN_PRIORITY, maximum=MAX_PRIORITY),
        run_as=parse_run_as(t, python=handler is not None),
        limits=parse_limits(t, python=handler is not None),
        rules=parse_rules(t, scheduled=schedule is not None, python=handler is not None),
    )
    t.done()
    if handler is not None:
        job.resolve_handler()
    return job
