"""The [store] table (SQLite at a path, or PostgreSQL at a URL) and the [cluster] table: what
selects the backend, and what one node of several needs to know."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from jobd.config.errors import ConfigError
from jobd.config.sections import SYNCHRONOUS_MODES, ClusterConfig, StoreConfig
from jobd.config.table import Table
from jobd.dburl import redact_url, url_problem

_STORE_KEYS = ("path", "url", "url_env")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Shown in the API, the logs and the runs it executes: letters, digits and what host names use.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}$")


def parse_store(t: Table, base_dir: Path, environ: Mapping[str, str], warnings: list[str]) -> StoreConfig:
    given = [key for key in _STORE_KEYS if t.has(key)]
    if len(given) > 1:
        raise ConfigError(
            f"{t.path}: give one of path (SQLite), url or url_env (PostgreSQL), not {' and '.join(given)}"
        )
    path = Path(t.string("path", str(StoreConfig().path)))
    url = t.string("url")
    env_name = t.string("url_env")
    if url is not None:
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"{t.key('url')}: {redact_url(url)!r} {problem}")
    if env_name is not None:
        if not _ENV_NAME.match(env_name):
            raise ConfigError(f"{t.key('url_env')}: {env_name!r} is not the name of an environment variable")
        url = environ.get(env_name, "")
        if not url:
            raise ConfigError(f"{t.key('url_env')}: environment variable {env_name} is not set")
        problem = url_problem(url)
        if problem:  # the value is not quoted: it may hold a password
            raise ConfigError(f"{t.key('url_env')}: the value of {env_name} {problem}")
    synchronous = t.string("synchronous", "normal", choices=SYNCHRONOUS_MODES)
    if url is not None and t.has("synchronous"):
        warnings.append(f"{t.key('synchronous')}: ignored with a PostgreSQL store (the server decides durability)")
    t.done()
    return StoreConfig(
        path=path if path.is_absolute() else base_dir / path,
        synchronous=synchronous,
        url=url,
        url_env=env_name,
    )


def parse_cluster(t: Table, store: StoreConfig, warnings: list[str]) -> ClusterConfig:
    d = ClusterConfig()
    node_name = t.string("node_name", d.node_name)
    if t.has("node_name") and not NODE_NAME.match(node_name):
        raise ConfigError(
            f"{t.key('node_name')}: {node_name!r} is not a node name: letters, digits, '_', '.', ':', '@', '-' "
            "(at most 255, starting with a letter or digit)"
        )
    heartbeat_s = t.number("heartbeat_s", d.heartbeat_s, minimum=0.1, maximum=3600.0)
    dead_after_s = t.number("dead_after_s", d.dead_after_s, minimum=0.1)
    if dead_after_s <= 2 * heartbeat_s:
        raise ConfigError(
            f"{t.key('dead_after_s')}: {dead_after_s:g} must be more than twice {t.key('heartbeat_s')} "
            f"({heartbeat_s:g}), so that a node is declared dead only after missing two heartbeats or more"
        )
    advertise_url = t.string("advertise_url")
    if advertise_url is not None:
        problem = _url_problem(advertise_url)
        if problem:
            raise ConfigError(f"{t.key('advertise_url')}: {advertise_url!r} {problem}")
        advertise_url = advertise_url.rstrip("/")
    t.done()
    if store.url is None and t.raw:
        warnings.append(f"{t.path}: ignored with a SQLite store; it takes effect with [store] url or url_env")
    return ClusterConfig(
        node_name=node_name, heartbeat_s=heartbeat_s, dead_after_s=dead_after_s, advertise_url=advertise_url
    )


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be where the other nodes reach this one, or None."""
    example = '(e.g. "http://jobs-1.internal:8080")'
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return f"is not a URL {example}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"is not an http:// or https:// address with a host {example}"
    if parts.username is not None or parts.query or parts.fragment:
        return f"must not carry credentials, a query or a fragment {example}"
    if port == 0:
        return f"has port 0: give the port the node listens on {example}"
    return None
