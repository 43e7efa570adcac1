"""The configuration as frozen dataclasses, one per TOML table, and the values keys may take."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jobd.calendars import FireWindow
from jobd.config.chains import NO_CHAIN, ChainConfig
from jobd.config.handlers import import_handler
from jobd.config.limits import Limits, RunAs
from jobd.config.notifiers import NotifierConfig, NotifyRules
from jobd.config.params import Params
from jobd.config.runrules import NO_RULES, RunRules
from jobd.config.secret_env import SecretSource
from jobd.dburl import redact_url

OVERLAP_POLICIES = ("skip", "buffer_one", "queue", "allow", "replace")
MISFIRE_POLICIES = ("run_once", "skip", "run_all")
MAX_CATCHUP_RUNS = 1000
SCOPES = ("read", "trigger", "admin")
SYNCHRONOUS_MODES = ("normal", "full")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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
    """SQLite at `path`, or PostgreSQL at `url` (then `path` only places the run logs)."""

    path: Path = Path("state/jobd.db")
    synchronous: str = "normal"
    url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    url_env: str | None = None  # the variable `url` was read from

    @property
    def logs_dir(self) -> Path:
        return self.path.parent / "logs"

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    def describe(self) -> str:
        """The store as it may be printed or logged: the path, or the URL without its password."""
        if self.url is None:
            return str(self.path)
        shown = redact_url(self.url)
        return shown if self.url_env is None else f"{shown} (from ${self.url_env})"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkersConfig:
    concurrency: int = 4
    shutdown_grace_s: float = 30.0
    kill_grace_s: float = 5.0
    log_tail_bytes: int = 64 * 1024
    max_log_bytes: int = 16 * 1024 * 1024
    # A waiting run's effective priority rises by 1 per this many seconds (0: no aging).
    priority_aging_s: float = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    name: str
    token: str = dataclasses.field(repr=False)
    scope: str
    jobs: tuple[str, ...] = ()  # glob patterns (fnmatch) of the jobs it may see; empty: every job


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
class DefaultsConfig:
    """What every job has unless it says otherwise."""

    notify: NotifyRules = dataclasses.field(default_factory=NotifyRules)
    secret_env: tuple[SecretSource, ...] = ()  # added to every job's own (see config/secret_env.py)


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: float = 30.0  # 0 keeps runs for ever
    failed_days: float = 90.0
    interval_s: float = 86400.0
    first_delay_s: float = 60.0  # the first clean-up after start
    batch_size: int = 500
    audit_days: float = 365.0  # 0 keeps the audit log for ever


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsConfig:
    token: str | None = dataclasses.field(default=None, repr=False)


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    """This node among others on one PostgreSQL; meaningless with a SQLite store."""

    node_name: str = dataclasses.field(default_factory=default_node_name)
    heartbeat_s: float = 5.0
    dead_after_s: float = 30.0
    advertise_url: str | None = None  # None: from the address the server listens on


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
    max_catchup_runs: int = 10  # misfire = "run_all": the newest this many missed fires run
    jitter_s: float = 0.0
    on_interrupt: str = "retry"
    alert_after_failures: int = 3
    alert_webhook: bool = False  # [alerts] webhook_url is set: the "alerts" notifier gets this job's alerts
    description: str = ""
    window: FireWindow | None = None  # exclude, only, active_from, active_until (see calendars.py)
    params: Params = dataclasses.field(
        default_factory=Params
    )  # [jobs.NAME.params.PARAM] definitions (see jobd.config.params)
    notify: NotifyRules = dataclasses.field(default_factory=NotifyRules)
    secret_env: tuple[SecretSource, ...] = ()  # variables read at run start, never stored
    chain: ChainConfig = NO_CHAIN  # on_success, on_failure, on_finish and their options
    groups: tuple[str, ...] = ()  # [groups.NAME]: a run starts only when each has a free slot
    priority: int = 0
    run_as: RunAs | None = None  # user, group, umask (commands only; see jobd.config.limits)
    limits: Limits | None = None  # memory_max, cpu_quota, tasks_max, io_weight (cgroup v2)
    rules: RunRules = NO_RULES  # late, long and short runs; pausing; which failures retry

    # The chain's keys under the names the config file gives them.
    @property
    def on_success(self) -> tuple[str, ...]:
        return self.chain.on_success

    @property
    def on_failure(self) -> tuple[str, ...]:
        return self.chain.on_failure

    @property
    def on_finish(self) -> tuple[str, ...]:
        return self.chain.on_finish

    @property
    def chain_params(self) -> Mapping[str, Any]:
        return self.chain.params

    @property
    def chain_partial_as(self) -> str:
        return self.chain.partial_as

    @property
    def max_chain_depth(self) -> int:
        return self.chain.max_depth

    # The run rules' keys under the names the config file gives them.
    @property
    def late_after_s(self) -> float | None:
        return self.rules.late_after_s

    @property
    def max_duration_s(self) -> float | None:
        return self.rules.max_duration_s

    @property
    def max_duration_p95_factor(self) -> float | None:
        return self.rules.max_duration_p95_factor

    @property
    def min_duration_s(self) -> float | None:
        return self.rules.min_duration_s

    @property
    def pause_after_failures(self) -> int | None:
        return self.rules.pause_after_failures

    @property
    def retry_on_exit_codes(self) -> tuple[int, ...] | None:
        return self.rules.retry_on_exit_codes

    @property
    def no_retry_on_exit_codes(self) -> tuple[int, ...]:
        return self.rules.no_retry_on_exit_codes

    @property
    def retry_on_exceptions(self) -> tuple[type[BaseException], ...] | None:
        return self.rules.retry_on_exceptions

    @property
    def kind(self) -> str:
        return "python" if self.handler else "command"

    def resolve_handler(self) -> Callable[..., Any]:
        """Import `package.module:function`; raises ConfigError naming the key."""
        return import_handler(self.handler or "", f"jobs.{self.name}.handler")


@dataclasses.dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    max_concurrency: int
    description: str = ""


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
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    jobs: Mapping[str, JobConfig] = dataclasses.field(default_factory=dict)
    notifiers: Mapping[str, NotifierConfig] = dataclasses.field(default_factory=dict)
    defaults: DefaultsConfig = DefaultsConfig()
    groups: Mapping[str, GroupConfig] = dataclasses.field(default_factory=dict)
    source: Path | None = None
    warnings: tuple[str, ...] = ()  # valid but probably not meant, one line each, naming the key
