"""Reading a config file: each TOML table checked and turned into its dataclass."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobd.config.calendars import parse_calendars
from jobd.config.chains import check_chains
from jobd.config.cluster import parse_cluster, parse_store
from jobd.config.errors import ConfigError
from jobd.config.groups import check_members, parse_groups
from jobd.config.jobs import parse_job, parse_zone
from jobd.config.notifiers import (
    ALERTS_NOTIFIER,
    NOTIFY_EVENTS,
    alerts_notifier,
    parse_notifiers,
    parse_notify,
)
from jobd.config.secret_env import parse_secret_env, secret_env_warnings
from jobd.config.sections import (
    SCOPES,
    AlertsConfig,
    AuthConfig,
    Config,
    DefaultsConfig,
    EventsConfig,
    MetricsConfig,
    RetentionConfig,
    SchedulerConfig,
    ServerConfig,
    Token,
    WorkersConfig,
)
from jobd.config.table import Table
from jobd.config.tokens import token_jobs, unmatched_token_jobs


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
    top = Table(raw, "")
    server = _server(top.table("server"))
    warnings: list[str] = []
    store = parse_store(top.table("store"), base_dir, environ, warnings)
    workers = _workers(top.table("workers"))
    auth = _auth(top.table("auth"), environ)
    scheduler = _scheduler(top.table("scheduler"), environ)
    events = _events(top.table("events"))
    alerts = _alerts(top.table("alerts"))
    retention = _retention(top.table("retention"))
    metrics = _metrics(top.table("metrics"))
    cluster = parse_cluster(top.table("cluster"), store, warnings)
    calendars = parse_calendars(top.table("calendars"), base_dir)
    notifiers = parse_notifiers(top.table("notifiers"), environ, base_dir)
    if alerts.webhook_url is not None and ALERTS_NOTIFIER in notifiers:
        raise ConfigError(
            f"notifiers.{ALERTS_NOTIFIER}: the name is the [alerts] webhook's while alerts.webhook_url is set"
        )
    defaults = top.table("defaults")
    notify = parse_notify(defaults, notifiers)
    secret_env = parse_secret_env(defaults, base_dir)
    defaults.done()
    jobs_table = top.table("jobs")
    jobs = {
        name: parse_job(
            name, jobs_table.table(name), scheduler, alerts, base_dir, calendars, notifiers, notify, secret_env
        )
        for name in list(jobs_table.raw)
    }
    jobs_table.done()
    warnings.extend(secret_env_warnings({n: j.secret_env for n, j in jobs.items()}, secret_env, environ))
    named = {name for job in jobs.values() for event in NOTIFY_EVENTS for name in job.notify.of(event)}
    warnings.extend(
        f"notifiers.{name}: no job's notify names it (only jobd notify-test reaches it)"
        for name in notifiers
        if name not in named
    )
    if alerts.webhook_url is not None:
        notifiers = {
            **notifiers,
            ALERTS_NOTIFIER: alerts_notifier(alerts.webhook_url, alerts.webhook_retries, alerts.webhook_timeout_s),
        }
    check_chains({name: job.chain for name, job in jobs.items()})
    groups = parse_groups(top.table("groups"))
    check_members(jobs, groups)
    top.done()
    warnings.extend(unmatched_token_jobs(auth, jobs))
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
        cluster=cluster,
        jobs=jobs,
        notifiers=notifiers,
        defaults=DefaultsConfig(notify=notify, secret_env=secret_env),
        groups=groups,
        source=source,
        warnings=tuple(warnings),
    )


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


def _origins(t: Table) -> tuple[str, ...]:
    origins = t.strings("cors_origins")
    for i, origin in enumerate(origins):
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{t.key('cors_origins')}[{i}]: {origin!r} is not an origin: write it as a browser "
                "sends it, e.g. 'https://app.example.com' (no path, no trailing /), or '*'"
            )
    return origins


def _server(t: Table) -> ServerConfig:
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


def _workers(t: Table) -> WorkersConfig:
    d = WorkersConfig()
    config = WorkersConfig(
        concurrency=t.integer("concurrency", d.concurrency, minimum=1, maximum=10_000),
        shutdown_grace_s=t.number("shutdown_grace_s", d.shutdown_grace_s),
        kill_grace_s=t.number("kill_grace_s", d.kill_grace_s),
        log_tail_bytes=t.integer("log_tail_bytes", d.log_tail_bytes, minimum=1024),
        max_log_bytes=t.integer("max_log_bytes", d.max_log_bytes, minimum=1024),
        priority_aging_s=t.number("priority_aging_s", d.priority_aging_s, maximum=365 * 86400),
    )
    t.done()
    return config


def _auth(t: Table, environ: Mapping[str, str]) -> AuthConfig:
    raw_tokens = t.get("tokens", (list,), [], "a list of tables")
    tokens: list[Token] = []
    for index, raw in enumerate(raw_tokens):
        item = Table(raw, f"{t.key('tokens')}[{index}]")
        name = item.string("name")
        if not name:
            raise ConfigError(f"{item.key('name')}: required")
        scope = item.string("scope", "read", choices=SCOPES)
        literal = item.string("token")
        env_name = item.string("token_env")
        if literal is not None and env_name is None:
            secret, key = literal, item.key("token")
        elif literal is None and env_name is not None:
            secret, key = environ.get(env_name, ""), item.key("token_env")
            if not secret:
                raise ConfigError(f"{key}: environment variable {env_name} is not set")
        else:
            raise ConfigError(f"{item.path}: give exactly one of token or token_env")
        if len(secret) < 8:
            raise ConfigError(f"{key}: too short (at least 8 characters)")
        _sendable(key, secret)
        for other_index, other in enumerate(tokens):
            if other.token == secret:
                raise ConfigError(f"{key}: the same secret as {t.key('tokens')}[{other_index}] ({other.name!r})")
        jobs = token_jobs(item)
        item.done()
        tokens.append(Token(name=name, token=secret, scope=scope, jobs=jobs))
    names = [token.name for token in tokens]
    if len(set(names)) != len(names):
        raise ConfigError(f"{t.key('tokens')}: token names must be unique")
    config = AuthConfig(
        tokens=tuple(tokens),
        ticket_ttl_s=t.number("ticket_ttl_s", AuthConfig().ticket_ttl_s, minimum=1.0),
    )
    t.done()
    return config


def _scheduler(t: Table, environ: Mapping[str, str]) -> SchedulerConfig:
    default = environ.get("TZ", "").lstrip(":") or "UTC"
    try:
        ZoneInfo(default)
    except (ZoneInfoNotFoundError, ValueError):
        default = "UTC"
    config = SchedulerConfig(timezone=parse_zone(t, "timezone", default))
    t.done()
    return config


def _events(t: Table) -> EventsConfig:
    d = EventsConfig()
    config = EventsConfig(
        ring_size=t.integer("ring_size", d.ring_size, minimum=10, maximum=10_000_000),
        subscriber_buffer=t.integer("subscriber_buffer", d.subscriber_buffer, minimum=4),
        summary_interval_s=t.number("summary_interval_s", d.summary_interval_s, minimum=0.05),
    )
    t.done()
    return config


def _alerts(t: Table) -> AlertsConfig:
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


def _retention(t: Table) -> RetentionConfig:
    d = RetentionConfig()
    config = RetentionConfig(
        days=t.number("days", d.days, minimum=0.0),
        failed_days=t.number("failed_days", d.failed_days, minimum=0.0),
        interval_s=t.number("interval_s", d.interval_s, minimum=1.0),
        first_delay_s=t.number("first_delay_s", d.first_delay_s, minimum=0.0),
        batch_size=t.integer("batch_size", d.batch_size, minimum=1, maximum=10_000),
        audit_days=t.number("audit_days", d.audit_days, minimum=0.0),
    )
    t.done()
    return config


def _sendable(key: str, secret: str) -> None:
    # Clients' Bearer and X-API-Key values are read without the white space around them.
    if secret != secret.strip():
        raise ConfigError(f"{key}: must not start or end with white space (no client could send it)")


def _metrics(t: Table) -> MetricsConfig:
    config = MetricsConfig(token=t.string("token"))
    if config.token is not None:
        _sendable(t.key("token"), config.token)
    t.done()
    return config
