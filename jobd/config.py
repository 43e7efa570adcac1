"""TOML configuration → frozen, validated dataclasses.

Every error names the key it is about, on one line, e.g.
`jobs.nightly.schedule: "61 * * * *" is not a valid cron expression (...)`.
Unknown keys are refused so that a misspelt option never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobd import cronspec

OVERLAP_POLICIES = ("skip", "buffer_one", "queue", "allow", "replace")
MISFIRE_POLICIES = ("run_once", "skip")
SCOPES = ("read", "trigger", "admin")
SYNCHRONOUS_MODES = ("normal", "full")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Bounds for keys that state none: larger values are typing mistakes, and durations past ~30
# years would overflow the date arithmetic of the scheduler and the store.
MAX_NUMBER = 1e9
MAX_INTEGER = 2**53


class ConfigError(Exception):
    """Invalid configuration; the message is one line that names the key."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    max_streams: int = 20_000
    sse_heartbeat_s: float = 15.0
    sse_retry_ms: int = 2000
    max_batch_runs: int = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path("state/jobd.db")
    synchronous: str = "normal"

    @property
    def logs_dir(self) -> Path:
        return self.path.parent / "logs"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkersConfig:
    concurrency: int = 4
    shutdown_grace_s: float = 30.0
    kill_grace_s: float = 5.0
    log_tail_bytes: int = 64 * 1024
    max_log_bytes: int = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    name: str
    token: str = dataclasses.field(repr=False)
    scope: str


@dataclasses.dataclass(frozen=True, slots=True)
class AuthConfig:
    tokens: tuple[Token, ...] = ()
    ticket_ttl_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    timezone: str = "UTC"


@dataclasses.dataclass(frozen=True, slots=True)
class EventsConfig:
    ring_size: int = 10_000
    subscriber_buffer: int = 1000
    summary_interval_s: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class AlertsConfig:
    alert_after_failures: int = 3
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 3


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: float = 30.0  # 0 keeps runs for ever
    failed_days: float = 90.0
    interval_s: float = 86400.0
    first_delay_s: float = 60.0  # the first clean-up after start
    batch_size: int = 500


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsConfig:
    token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class JobConfig:
    name: str
    command: tuple[str, ...] | None = None
    shell: str | None = None
    handler: str | None = None
    cwd: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    schedule: str | None = None
    timezone: str = "UTC"
    timeout_s: float | None = None
    retries: int = 0
    retry_backoff_s: float = 10.0
    max_concurrency: int = 1
    overlap: str = "skip"
    misfire: str = "run_once"
    misfire_grace_s: float = 3600.0
    jitter_s: float = 0.0
    on_interrupt: str = "retry"
    alert_after_failures: int = 3
    description: str = ""

    @property
    def kind(self) -> str:
        return "python" if self.handler else "command"

    def resolve_handler(self) -> Callable[..., Any]:
        """Import `package.module:function`; raises ConfigError naming the key."""
        return _import_handler(self.handler or "", f"jobs.{self.name}.handler")


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    workers: WorkersConfig = WorkersConfig()
    auth: AuthConfig = AuthConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    events: EventsConfig = EventsConfig()
    alerts: AlertsConfig = AlertsConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    jobs: Mapping[str, JobConfig] = dataclasses.field(default_factory=dict)
    source: Path | None = None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file. Relative store paths are taken from the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(raw, environ=os.environ if environ is None else environ, base_dir=path.parent, source=path)


def parse_config(
    raw: Mapping[str, Any],
    *,
    environ: Mapping[str, str],
    base_dir: Path = Path("."),
    source: Path | None = None,
) -> Config:
    top = _Table(raw, "")
    server = _server(top.table("server"))
    store = _store(top.table("store"), base_dir)
    workers = _workers(top.table("workers"))
    auth = _auth(top.table("auth"), environ)
    scheduler = _scheduler(top.table("scheduler"), environ)
    events = _events(top.table("events"))
    alerts = _alerts(top.table("alerts"))
    retention = _retention(top.table("retention"))
    metrics = _metrics(top.table("metrics"))
    jobs_table = top.table("jobs")
    jobs = {name: _job(name, jobs_table.table(name), scheduler, alerts, base_dir) for name in list(jobs_table.raw)}
    jobs_table.done()
    top.done()
    if not auth.enabled and not is_loopback(server.host):
        raise ConfigError(
            f"server.host: {server.host!r} is not a loopback address; "
            "without [auth] tokens jobd serves only 127.0.0.1 / ::1 / localhost"
        )
    return Config(
        server=server,
        store=store,
        workers=workers,
        auth=auth,
        scheduler=scheduler,
        events=events,
        alerts=alerts,
        retention=retention,
        metrics=metrics,
        jobs=jobs,
        source=source,
    )


class _Table:
    """Typed reads from one TOML table, remembering which keys were used."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table, not {_type_name(raw)}")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
        self.used.add(name)
        if name not in self.raw:
            return default
        value = self.raw[name]
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: must be {what}, not a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.key(name)}: must be {what}, not {_type_name(value)}")
        return value

    def string(self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> Any:
        value = self.get(name, (str,), default, "a string")
        if value is not None:
            self._no_nul(name, value)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, name: str, default: float | None, *, minimum: float = 0.0, maximum: float = MAX_NUMBER) -> Any:
        value = self.get(name, (int, float), default, "a number")
        if value is None:
            return None
        if not math.isfinite(value):
            raise ConfigError(f"{self.key(name)}: must be a finite number, not {value}")
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: {value} is below the minimum {minimum:g}")
        if value > maximum:
            raise ConfigError(f"{self.key(name)}: {value} is above the maximum {maximum:g}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = MAX_INTEGER) -> int:
        value = self.get(name, (int,), default, "an integer")
        if not minimum <= value <= maximum:
            if maximum < MAX_INTEGER:
                bound = f"from {minimum} to {maximum}"
            else:
                bound = f"at least {minimum}" if value < minimum else f"at most {maximum}"
            raise ConfigError(f"{self.key(name)}: {value} is out of range (must be {bound})")
        return int(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, (list,), [], "a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(name)}: must be a list of strings, found {_type_name(item)}")
            self._no_nul(name, item)
        return tuple(value)

    def _no_nul(self, name: str, value: str) -> None:
        # No path, argument or environment value can hold one: the run would fail at its start.
        if "\0" in value:
            raise ConfigError(f"{self.key(name)}: must not contain a NUL character")

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.raw.get(name, {}), self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def is_loopback(host: str) -> bool:
    """Whether an address (or localhost) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# What a browser sends as Origin: scheme://host[:port], nothing after it (not even a "/").
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def _origins(t: _Table) -> tuple[str, ...]:
    origins = t.strings("cors_origins")
    for i, origin in enumerate(origins):
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{t.key('cors_origins')}[{i}]: {origin!r} is not an origin: write it as a browser "
                "sends it, e.g. 'https://app.example.com' (no path, no trailing /), or '*'"
            )
    return origins


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    config = ServerConfig(
        host=t.string("host", d.host),
        port=t.integer("port", d.port, minimum=0, maximum=65535),
        max_body_bytes=t.integer("max_body_bytes", d.max_body_bytes, minimum=1024),
        cors_origins=_origins(t),
        max_streams=t.integer("max_streams", d.max_streams, minimum=1),
        sse_heartbeat_s=t.number("sse_heartbeat_s", d.sse_heartbeat_s, minimum=0.05),
        sse_retry_ms=t.integer("sse_retry_ms", d.sse_retry_ms, minimum=0),
        max_batch_runs=t.integer("max_batch_runs", d.max_batch_runs, minimum=1),
    )
    t.done()
    return config


def _store(t: _Table, base_dir: Path) -> StoreConfig:
    path = Path(t.string("path", str(StoreConfig().path)))
    config = StoreConfig(
        path=path if path.is_absolute() else base_dir / path,
        synchronous=t.string("synchronous", "normal", choices=SYNCHRONOUS_MODES),
    )
    t.done()
    return config


def _workers(t: _Table) -> WorkersConfig:
    d = WorkersConfig()
    config = WorkersConfig(
        concurrency=t.integer("concurrency", d.concurrency, minimum=1, maximum=10_000),
        shutdown_grace_s=t.number("shutdown_grace_s", d.shutdown_grace_s),
        kill_grace_s=t.number("kill_grace_s", d.kill_grace_s),
        log_tail_bytes=t.integer("log_tail_bytes", d.log_tail_bytes, minimum=1024),
        max_log_bytes=t.integer("max_log_bytes", d.max_log_bytes, minimum=1024),
    )
    t.done()
    return config


def _auth(t: _Table, environ: Mapping[str, str]) -> AuthConfig:
    raw_tokens = t.get("tokens", (list,), [], "a list of tables")
    tokens: list[Token] = []
    for index, raw in enumerate(raw_tokens):
        item = _Table(raw, f"{t.key('tokens')}[{index}]")
        name = item.string("name")
        if not name:
            raise ConfigError(f"{item.key('name')}: required")
        scope = item.string("scope", "read", choices=SCOPES)
        literal = item.string("token")
        env_name = item.string("token_env")
        if (literal is None) == (env_name is None):
            raise ConfigError(f"{item.path}: give exactly one of token or token_env")
        if env_name is not None:
            literal = environ.get(env_name)
            if not literal:
                raise ConfigError(f"{item.key('token_env')}: environment variable {env_name} is not set")
        key = item.key("token" if env_name is None else "token_env")
        if len(literal) < 8:
            raise ConfigError(f"{key}: too short (at least 8 characters)")
        _sendable(key, literal)
        for other_index, other in enumerate(tokens):
            if other.token == literal:
                raise ConfigError(f"{key}: the same secret as {t.key('tokens')}[{other_index}] ({other.name!r})")
        item.done()
        tokens.append(Token(name=name, token=literal, scope=scope))
    names = [token.name for token in tokens]
    if len(set(names)) != len(names):
        raise ConfigError(f"{t.key('tokens')}: token names must be unique")
    config = AuthConfig(
        tokens=tuple(tokens),
        ticket_ttl_s=t.number("ticket_ttl_s", AuthConfig().ticket_ttl_s, minimum=1.0),
    )
    t.done()
    return config


def _zone(t: _Table, name: str, default: str) -> str:
    zone = t.string(name, default)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{t.key(name)}: {zone!r} is not a known time zone") from None
    return zone


def _scheduler(t: _Table, environ: Mapping[str, str]) -> SchedulerConfig:
    default = environ.get("TZ", "").lstrip(":") or "UTC"
    try:
        ZoneInfo(default)
    except (ZoneInfoNotFoundError, ValueError):
        default = "UTC"
    config = SchedulerConfig(timezone=_zone(t, "timezone", default))
    t.done()
    return config


def _events(t: _Table) -> EventsConfig:
    d = EventsConfig()
    config = EventsConfig(
        ring_size=t.integer("ring_size", d.ring_size, minimum=10, maximum=10_000_000),
        subscriber_buffer=t.integer("subscriber_buffer", d.subscriber_buffer, minimum=4),
        summary_interval_s=t.number("summary_interval_s", d.summary_interval_s, minimum=0.05),
    )
    t.done()
    return config


def _alerts(t: _Table) -> AlertsConfig:
    d = AlertsConfig()
    url = t.string("webhook_url")
    if url is not None and not re.match(r"^https?://", url):
        raise ConfigError(f"alerts.webhook_url: {url!r} must start with http:// or https://")
    config = AlertsConfig(
        alert_after_failures=t.integer("alert_after_failures", d.alert_after_failures, minimum=1),
        webhook_url=url,
        webhook_timeout_s=t.number("webhook_timeout_s", d.webhook_timeout_s, minimum=0.1),
        webhook_retries=t.integer("webhook_retries", d.webhook_retries, minimum=0, maximum=20),
    )
    t.done()
    return config


def _retention(t: _Table) -> RetentionConfig:
    d = RetentionConfig()
    config = RetentionConfig(
        days=t.number("days", d.days, minimum=0.0),
        failed_days=t.number("failed_days", d.failed_days, minimum=0.0),
        interval_s=t.number("interval_s", d.interval_s, minimum=1.0),
        first_delay_s=t.number("first_delay_s", d.first_delay_s, minimum=0.0),
        batch_size=t.integer("batch_size", d.batch_size, minimum=1, maximum=10_000),
    )
    t.done()
    return config


def _sendable(key: str, secret: str) -> None:
    # Clients' Bearer and X-API-Key values are read without the white space around them.
    if secret != secret.strip():
        raise ConfigError(f"{key}: must not start or end with white space (no client could send it)")


def _metrics(t: _Table) -> MetricsConfig:
    config = MetricsConfig(token=t.string("token"))
    if config.token is not None:
        _sendable(t.key("token"), config.token)
    t.done()
    return config


_JOB_DEFAULTS = JobConfig(name="defaults")  # one, not one per job: 10,000 jobs are parsed at start


def _job(name: str, t: _Table, scheduler: SchedulerConfig, alerts: AlertsConfig, base_dir: Path) -> JobConfig:
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
            raise ConfigError(f"{t.key('env')}.{key}: must be a string, not {_type_name(value)}")
        if "\0" in value:
            raise ConfigError(f"{t.key('env')}.{key}: must not contain a NUL character")
    cwd = t.string("cwd")
    if cwd is not None and not Path(cwd).is_absolute():
        cwd = str((base_dir / cwd).resolve())
    zone = _zone(t, "timezone", scheduler.timezone)
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
        jitter_s=t.number("jitter_s", d.jitter_s),
        on_interrupt=t.string("on_interrupt", d.on_interrupt, choices=("retry", "fail")),
        alert_after_failures=t.integer("alert_after_failures", alerts.alert_after_failures, minimum=1),
        description=t.string("description", ""),
    )
    t.done()
    if handler is not None:
        job.resolve_handler()
    return job


@functools.lru_cache(maxsize=4096)  # every run of a job resolves its handler: import it once
def _import_handler(spec: str, key: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code is a config error
        raise ConfigError(f"{key}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{key}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return target
