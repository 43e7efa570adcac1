"""[store] and [cluster]: a PostgreSQL URL (given, or read from the environment) selects the
cluster store, SQLite stays the default, each wrong value is refused with one line naming its
key, and no password is ever shown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from process import DaemonProcess

from jobd.config import ConfigError, parse_config
from jobd.config.sections import StoreConfig
from jobd.dburl import redact_url, scrub, url_problem

ROOT = Path(__file__).parent.parent
URL = "postgresql://jobd:s3cret@db.example.com:5432/jobd"


def parse(raw, environ=None):
    return parse_config(raw, environ=environ or {})


def run_cli(*args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, "-m", "jobd", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_sqlite_is_the_default_and_path_keeps_it():
    store = parse({}).store
    assert (store.backend, store.url, store.path) == ("sqlite", None, Path("state/jobd.db"))
    store = parse({"store": {"path": "/var/lib/jobd/jobd.db"}}).store
    assert (store.backend, store.path, store.describe()) == (
        "sqlite",
        Path("/var/lib/jobd/jobd.db"),
        "/var/lib/jobd/jobd.db",
    )


def test_a_postgresql_url_selects_the_cluster_store():
    for url in (URL, "postgres://db/jobd", "postgresql:///jobd?host=/run/postgresql"):
        store = parse({"store": {"url": url}}).store
        assert (store.backend, store.url, store.url_env) == ("postgresql", url, None)


def test_url_env_reads_the_url_from_the_environment_at_load():
    store = parse({"store": {"url_env": "JOBD_DATABASE_URL"}}, {"JOBD_DATABASE_URL": URL}).store
    assert (store.backend, store.url, store.url_env) == ("postgresql", URL, "JOBD_DATABASE_URL")
    assert store.describe() == "postgresql://jobd:***@db.example.com:5432/jobd (from $JOBD_DATABASE_URL)"


@pytest.mark.parametrize(
    ("store", "environ", "message"),
    [
        (
            {"path": "a.db", "url": URL},
            {},
            "store: give one of path (SQLite), url or url_env (PostgreSQL), not path and url",
        ),
        (
            {"url": URL, "url_env": "X"},
            {"X": URL},
            "store: give one of path (SQLite), url or url_env (PostgreSQL), not url and url_env",
        ),
        (
            {"url": "mysql://u:pw@h/db"},
            {},
            "store.url: 'mysql://u:***@h/db' must start with postgresql:// or postgres://",
        ),
        (
            {"url": "db.example.com:5432"},
            {},
            "store.url: 'db.example.com:5432' must start with postgresql:// or postgres://",
        ),
        ({"url": "postgresql://h:99999/db"}, {}, "store.url: 'postgresql://h:99999/db' is not a valid URL"),
        ({"url": 5432}, {}, "store.url: must be a string, not an integer"),
        ({"url_env": "JOBD_DATABASE_URL"}, {}, "store.url_env: environment variable JOBD_DATABASE_URL is not set"),
        (
            {"url_env": "JOBD_DATABASE_URL"},
            {"JOBD_DATABASE_URL": ""},
            "store.url_env: environment variable JOBD_DATABASE_URL is not set",
        ),
        (
            {"url_env": "X"},
            {"X": "mysql://u:pw@h/db"},
            "store.url_env: the value of X must start with postgresql:// or postgres://",
        ),
        ({"url_env": "NOT A NAME"}, {}, "store.url_env: 'NOT A NAME' is not the name of an environment variable"),
        ({"uri": URL}, {}, "store.uri: unknown key"),
    ],
)
def test_store_errors_name_the_key_on_one_line(store, environ, message):
    with pytest.raises(ConfigError) as caught:
        parse({"store": store}, environ)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
    assert "pw" not in str(caught.value) and "s3cret" not in str(caught.value)


def test_cluster_defaults():
    cluster = parse({"store": {"url": URL}}).cluster
    hostname_pid = f"{socket.gethostname()}-{os.getpid()}"
    assert (cluster.node_name, cluster.heartbeat_s, cluster.dead_after_s) == (hostname_pid, 5.0, 30.0)
    cluster = parse(
        {"store": {"url": URL}, "cluster": {"node_name": "web-1", "heartbeat_s": 1, "dead_after_s": 2.5}}
    ).cluster
    assert (cluster.node_name, cluster.heartbeat_s, cluster.dead_after_s) == ("web-1", 1.0, 2.5)
    assert cluster.advertise_url is None  # from the address the server listens on
    advertised = parse({"store": {"url": URL}, "cluster": {"advertise_url": "https://jobs-1.internal:8443/"}})
    assert advertised.cluster.advertise_url == "https://jobs-1.internal:8443"


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            {"dead_after_s": 10},
            "cluster.dead_after_s: 10 must be more than twice cluster.heartbeat_s (5), "
            "so that a node is declared dead only after missing two heartbeats or more",
        ),
        ({"heartbeat_s": 20}, "cluster.dead_after_s: 30 must be more than twice cluster.heartbeat_s (20)"),
        ({"heartbeat_s": 0}, "cluster.heartbeat_s: 0 is below the minimum 0.1"),
        ({"heartbeat_s": "5s"}, "cluster.heartbeat_s: must be a number, not a string"),
        ({"dead_after_s": -1}, "cluster.dead_after_s: -1 is below the minimum 0.1"),
        ({"node_name": ""}, "cluster.node_name: '' is not a node name"),
        ({"node_name": "web 1"}, "cluster.node_name: 'web 1' is not a node name"),
        ({"node_name": "-x"}, "cluster.node_name: '-x' is not a node name"),
        ({"leader": True}, "cluster.leader: unknown key"),
        ({"advertise_url": "jobs-1:8080"}, "cluster.advertise_url: 'jobs-1:8080' is not an http:// or https:// "),
        ({"advertise_url": "ftp://jobs-1"}, "cluster.advertise_url: 'ftp://jobs-1' is not an http:// or https://"),
        ({"advertise_url": "http://[::1"}, "cluster.advertise_url: 'http://[::1' is not a URL"),
        ({"advertise_url": "http://a:b@jobs-1"}, "cluster.advertise_url: 'http://a:b@jobs-1' must not carry"),
        ({"advertise_url": "http://jobs-1:0"}, "cluster.advertise_url: 'http://jobs-1:0' has port 0"),
        ({"advertise_url": 8080}, "cluster.advertise_url: must be a string"),
    ],
)
def test_cluster_errors_name_the_key_on_one_line(cluster, message):
    with pytest.raises(ConfigError) as caught:
        parse({"store": {"url": URL}, "cluster": cluster})
    assert str(caught.value).startswith(message), str(caught.value)


def test_cluster_with_sqlite_is_accepted_with_a_warning():
    config = parse({"cluster": {"node_name": "a"}})
    assert config.cluster.node_name == "a"
    assert config.warnings == ("cluster: ignored with a SQLite store; it takes effect with [store] url or url_env",)
    assert parse({}).warnings == () and parse({"store": {"url": URL}, "cluster": {"node_name": "a"}}).warnings == ()
    assert parse({"store": {"url": URL, "synchronous": "full"}}).warnings == (
        "store.synchronous: ignored with a PostgreSQL store (the server decides durability)",
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "postgresql://jobd:***@db.example.com:5432/jobd"),
        ("postgresql://jobd@db/jobd", "postgresql://jobd@db/jobd"),
        (
            "postgresql://db/jobd?user=jobd&password=s3cret&sslmode=require",
            "postgresql://db/jobd?user=jobd&password=***&sslmode=require",
        ),
        ("postgresql://jobd:p%40ss@[::1]:5432/jobd", "postgresql://jobd:***@[::1]:5432/jobd"),
        ("postgresql://:s3cret@db/jobd", "postgresql://:***@db/jobd"),
    ],
)
def test_redact_url_hides_the_password_only(url, shown):
    assert redact_url(url) == shown


def test_the_password_is_in_no_repr_and_no_driver_message():
    config = parse({"store": {"url": URL}})
    assert "s3cret" not in repr(config) and "s3cret" not in config.store.describe()
    assert "s3cret" not in repr(StoreConfig(url=URL))
    text = f'connection to "{URL}" failed: password "s3cret" rejected'
    assert (
        scrub(text, URL)
        == 'connection to "postgresql://jobd:***@db.example.com:5432/jobd" failed: password "***" rejected'
    )
    assert url_problem("postgresql://h/db#frag") == "must not have a #fragment"


def test_check_prints_the_store_without_its_password_and_the_warnings(tmp_path):
    pg = tmp_path / "pg.toml"
    pg.write_text('[store]\nurl_env = "JOBD_DATABASE_URL"\n[cluster]\nnode_name = "web-1"\n')
    env = {"PATH": "/usr/bin:/bin", "JOBD_DATABASE_URL": URL}
    result = run_cli("check", "-c", str(pg), env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "store: postgresql, postgresql://jobd:***@db.example.com:5432/jobd (from $JOBD_DATABASE_URL)" in result.stdout
    )
    assert (
        "cluster node: web-1 (heartbeat every 5 s, dead after 30 s), "
        "reached by the other nodes at the address the server listens on\n"
    ) in result.stdout
    assert "s3cret" not in result.stdout + result.stderr and result.stderr == ""
    unset = run_cli("check", "-c", str(pg), env={"PATH": "/usr/bin:/bin"})
    assert unset.returncode == 2
    assert unset.stderr == "jobd: invalid config: store.url_env: environment variable JOBD_DATABASE_URL is not set\n"

    sqlite = tmp_path / "sqlite.toml"
    sqlite.write_text("[cluster]\nheartbeat_s = 2\n")
    result = run_cli("check", "-c", str(sqlite))
    assert result.returncode == 0
    assert (
        result.stderr
        == "jobd: warning: cluster: ignored with a SQLite store; it takes effect with [store] url or url_env\n"
    )
    report = json.loads(run_cli("check", "-c", str(sqlite), "--json").stdout)
    assert report["store"] == {"backend": "sqlite", "location": str(tmp_path / "state" / "jobd.db")}
    assert report["warnings"] == ["cluster: ignored with a SQLite store; it takes effect with [store] url or url_env"]


async def test_serve_logs_each_warning_as_config_warning(tmp_path):
    config = tmp_path / "jobd.toml"
    config.write_text('[server]\nport = 0\n[cluster]\nnode_name = "a"\n')
    daemon = DaemonProcess(config)
    try:
        await daemon.start()
        [line] = daemon.events("config_warning")
        assert line["problem"] == "cluster: ignored with a SQLite store; it takes effect with [store] url or url_env"
        assert line["level"] == "warning"
        assert await daemon.stop() == 0
    finally:
        await daemon.cleanup()
