"""`[notifiers.NAME]` and the `notify` tables of jobs and of `[defaults]` (see docs/notifications.md).

A notifier says where a message goes (a webhook, an SMTP server, a command); a job's `notify`
says which notifiers hear of which of its events. Templates are `string.Template` text
(`$job`, `${status}`), checked here against the fields an event has.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobd.config.errors import ConfigError
from jobd.config.table import Table, type_name

NOTIFY_EVENTS = ("start", "success", "failure", "recovery", "late", "long")
NOTIFIER_KINDS = ("webhook", "email", "command")
# What a template may name: the event, the job and the fields of its run (empty when absent).
TEMPLATE_FIELDS = frozenset(
    {
        "event",
        "job",
        "text",
        "at",
        "notifier",
        "run_id",
        "status",
        "error",
        "exit_code",
        "attempt",
        "duration_ms",
        "triggered_by",
        "scheduled_for",
        "started_at",
        "finished_at",
        "consecutive_failures",
        "node",
        "reason",
    }
)
_METHODS = ("POST", "PUT", "PATCH")
DEFAULT_SUBJECT = "jobd: $text"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyRules:
    """For each event of a job, the notifiers told of it."""

    on_start: tuple[str, ...] = ()
    on_success: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    on_recovery: tuple[str, ...] = ()
    on_late: tuple[str, ...] = ()
    on_long: tuple[str, ...] = ()

    def of(self, event: str) -> tuple[str, ...]:
        names: tuple[str, ...] = getattr(self, "on_" + event)
        return names


@dataclasses.dataclass(frozen=True, slots=True)
class NotifierConfig:
    name: str
    kind: str
    max_attempts: int = 10
    retry_backoff_s: float = 10.0  # the first wait; it doubles, up to MAX_BACKOFF_S
    timeout_s: float = 10.0
    # webhook
    url: str = ""
    method: str = "POST"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: Any = None  # None: the event as JSON; a template string; or a table whose strings are templates
    # email
    host: str = ""
    port: int = 25
    starttls: bool = False
    tls: bool = False
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    sender: str = ""
    to: tuple[str, ...] = ()
    subject: str = DEFAULT_SUBJECT
    # command
    argv: tuple[str, ...] = ()


ALERTS_NOTIFIER = "alerts"  # the webhook notifier [alerts] webhook_url makes (see jobd.notify.alerts)
ALERTS_RETRY_BACKOFF_S = 0.5


def alerts_notifier(url: str, retries: int, timeout_s: float) -> NotifierConfig:
    """[alerts] as a webhook notifier: its messages are the alerts' own JSON (no template), and
    its retries those of webhook_retries, after a short first wait as they always had."""
    return NotifierConfig(
        name=ALERTS_NOTIFIER,
        kind="webhook",
        url=url,
        max_attempts=1 + retries,
        retry_backoff_s=ALERTS_RETRY_BACKOFF_S,
        timeout_s=timeout_s,
    )


def _template(t: Table, key: str, text: str) -> str:
    try:
        names = string.Template(text).get_identifiers()
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid template ({exc}); write $$ for a dollar sign") from None
    if not string.Template(text).is_valid():
        raise ConfigError(f"{key}: not a valid template; write $$ for a dollar sign")
    unknown = sorted(set(names) - TEMPLATE_FIELDS)
    if unknown:
        raise ConfigError(f"{key}: unknown field ${unknown[0]} (known: {', '.join(sorted(TEMPLATE_FIELDS))})")
    return text


def _body(t: Table, key: str, value: Any) -> Any:
    """A webhook body: its strings are templates, checked all the way down."""
    if isinstance(value, str):
        return _template(t, key, value)
    if isinstance(value, list):
        return [_body(t, f"{key}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {name: _body(t, f"{key}.{name}", item) for name, item in value.items()}
    if isinstance(value, bool | int | float):
        return value
    raise ConfigError(f"{key}: must be a string, a number, a boolean, a list or a table, not {type_name(value)}")


def _boolean(t: Table, name: str, default: bool) -> bool:
    value: bool = t.get(name, (bool,), default, "a boolean")
    return value


def _password(t: Table, environ: Mapping[str, str], base_dir: Path) -> str | None:
    env_name = t.string("password_env")
    file_name = t.string("password_file")
    if env_name is not None and file_name is not None:
        raise ConfigError(f"{t.path}: give password_env or password_file, not both")
    if env_name is not None:
        value = environ.get(env_name)
        if not value:
            raise ConfigError(f"{t.key('password_env')}: environment variable {env_name} is not set")
        return value
    if file_name is not None:
        path = Path(file_name) if Path(file_name).is_absolute() else base_dir / file_name
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{t.key('password_file')}: cannot read {path}: {exc.strerror}") from None
    return None


def parse_notifier(name: str, t: Table, environ: Mapping[str, str], base_dir: Path) -> NotifierConfig:
    kind = t.string("kind", choices=NOTIFIER_KINDS)
    if kind is None:
        raise ConfigError(f"{t.key('kind')}: required (one of {', '.join(NOTIFIER_KINDS)})")
    d = NotifierConfig(name=name, kind=kind)
    common: dict[str, Any] = {
        "max_attempts": t.integer("max_attempts", d.max_attempts, minimum=1, maximum=100),
        "retry_backoff_s": t.number("retry_backoff_s", d.retry_backoff_s, minimum=0.01),
        "timeout_s": t.number("timeout_s", d.timeout_s, minimum=0.1, maximum=3600),
    }
    if kind == "webhook":
        config = NotifierConfig(name=name, kind=kind, **common, **_webhook(t))
    elif kind == "email":
        config = NotifierConfig(name=name, kind=kind, **common, **_email(t, environ, base_dir))
    else:
        argv = t.strings("argv")
        if not argv or not argv[0]:
            raise ConfigError(f"{t.key('argv')}: required, the program and its arguments")
        config = NotifierConfig(name=name, kind=kind, **common, argv=argv)
    t.done()
    return config


def _webhook(t: Table) -> dict[str, Any]:
    url = t.string("url")
    if url is None or not re.match(r"^https?://", url):
        raise ConfigError(f"{t.key('url')}: required, an http:// or https:// URL")
    headers = t.get("headers", (dict,), {}, "a table of strings")
    for header, value in headers.items():
        if not _HEADER_NAME.match(header) or not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"{t.key('headers')}.{header}: a header name and a one-line string value")
    body = t.get("body", (str, dict, list), None, "a string or a table")
    return {
        "url": url,
        "method": t.string("method", "POST", choices=_METHODS),
        "headers": dict(headers),
        "body": None if body is None else _body(t, t.key("body"), body),
    }


def _email(t: Table, environ: Mapping[str, str], base_dir: Path) -> dict[str, Any]:
    host = t.string("host")
    if not host:
        raise ConfigError(f"{t.key('host')}: required, the SMTP server")
    starttls, tls = _boolean(t, "starttls", False), _boolean(t, "tls", False)
    if starttls and tls:
        raise ConfigError(f"{t.path}: starttls and tls exclude each other (tls: port 465; starttls: port 587)")
    sender = t.string("from")
    if not sender or "@" not in sender:
        raise ConfigError(f"{t.key('from')}: required, the sender's address")
    to = t.strings("to")
    if not to or any("@" not in address for address in to):
        raise ConfigError(f"{t.key('to')}: required, a list of addresses")
    user = t.string("user")
    password = _password(t, environ, base_dir)
    if password is not None and user is None:
        raise ConfigError(f"{t.key('user')}: required with a password")
    body = t.string("body")
    return {
        "host": host,
        "port": t.integer("port", 465 if tls else 587 if starttls else 25, minimum=1, maximum=65535),
        "starttls": starttls,
        "tls": tls,
        "user": user,
        "password": password,
        "sender": sender,
        "to": to,
        "subject": _template(t, t.key("subject"), t.string("subject", DEFAULT_SUBJECT)),
        "body": None if body is None else _template(t, t.key("body"), body),
    }


def parse_notifiers(t: Table, environ: Mapping[str, str], base_dir: Path) -> dict[str, NotifierConfig]:
    notifiers = {name: parse_notifier(name, t.table(name), environ, base_dir) for name in list(t.raw)}
    t.done()
    return notifiers


def parse_notify(
    t: Table, notifiers: Mapping[str, NotifierConfig], defaults: NotifyRules = NotifyRules()
) -> NotifyRules:
    """A `notify` table: each event's list replaces the defaults' list for that event."""
    if t.get("notify", (dict,), None, 'a table like { on_failure = ["ops"] }') is None:
        return defaults
    rules = t.table("notify")
    lists: dict[str, tuple[str, ...]] = {}
    for event in NOTIFY_EVENTS:
        key = "on_" + event
        if not rules.has(key):
            lists[key] = defaults.of(event)
            continue
        names = rules.strings(key)
        for index, name in enumerate(names):
            if name not in notifiers:
                known = ", ".join(sorted(notifiers)) or "none configured"
                raise ConfigError(f"{rules.key(key)}[{index}]: no notifier {name!r} ([notifiers.NAME]; {known})")
        lists[key] = tuple(dict.fromkeys(names))
    rules.done()
    return NotifyRules(**lists)
