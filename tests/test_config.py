"""Configuration: every invalid input is refused with one line naming the key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from jobd.config import ConfigError, load_config, parse_config
from jobd.config.table import Table

ROOT = Path(__file__).parent.parent


def parse(raw, environ=None):
    return parse_config(raw, environ=environ or {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"jobs": {"a": {"command": ["true"], "schedule": "61 * * * *"}}},
            "jobs.a.schedule: '61 * * * *' is not a valid cron expression",
        ),
        ({"jobs": {"a": {"command": ["true"], "timeoutt": 3}}}, "jobs.a.timeoutt: unknown key"),
        (
            {"jobs": {"a": {"command": ["true"], "timezone": "Mars/Olympus"}}},
            "jobs.a.timezone: 'Mars/Olympus' is not a known time zone",
        ),
        ({"jobs": {"a": {"command": ["true"], "overlap": "sometimes"}}}, "jobs.a.overlap: 'sometimes' is not one of"),
        ({"jobs": {"a": {"command": "true"}}}, "jobs.a.command: must be a list of strings, not a string"),
        ({"jobs": {"a": {"command": ["true"], "shell": "true"}}}, "jobs.a: a job needs exactly one of"),
        ({"jobs": {"a": {}}}, "jobs.a: a job needs exactly one of command, shell or handler (found none)"),
        ({"jobs": {"a": {"handler": "no_such_module:f"}}}, "jobs.a.handler: cannot import 'no_such_module'"),
        ({"jobs": {"a": {"handler": "json"}}}, "jobs.a.handler: 'json' must look like 'package.module:function'"),
        ({"jobs": {"a": {"command": ["true"], "retries": -1}}}, "jobs.a.retries: -1 is out of range"),
        ({"jobs": {"a": {"command": ["true"], "timeout_s": "10"}}}, "jobs.a.timeout_s: must be a number, not a string"),
        ({"workers": {"concurrency": 0}}, "workers.concurrency: 0 is out of range"),
        ({"workers": {"concurrency": True}}, "workers.concurrency: must be an integer, not a boolean"),
        ({"server": {"port": 70000}}, "server.port: 70000 is out of range"),
        ({"server": {"host": "0.0.0.0"}}, "server.host: '0.0.0.0' is not a loopback address"),
        ({"servre": {}}, "servre: unknown key"),
        ({"store": {"synchronous": "off"}}, "store.synchronous: 'off' is not one of normal, full"),
        (
            {"auth": {"tokens": [{"name": "x", "token": "0123456789", "scope": "god"}]}},
            "auth.tokens[0].scope: 'god' is not one of read, trigger, admin",
        ),
        (
            {"auth": {"tokens": [{"name": "x", "token_env": "NOPE_TOKEN"}]}},
            "auth.tokens[0].token_env: environment variable NOPE_TOKEN is not set",
        ),
        ({"auth": {"tokens": [{"name": "x"}]}}, "auth.tokens[0]: give exactly one of token or token_env"),
        ({"alerts": {"webhook_url": "ftp://x"}}, "alerts.webhook_url: 'ftp://x' must start with http"),
        ({"jobs": {"bad name!": {"command": ["true"]}}}, "jobs.bad name!: job names use letters"),
        (
            {"jobs": {"a": {"command": ["true"], "timeout_s": float("nan")}}},
            "jobs.a.timeout_s: must be a finite number, not nan",
        ),
        (
            {"jobs": {"a": {"command": ["true"], "misfire_grace_s": float("inf")}}},
            "jobs.a.misfire_grace_s: must be a finite number, not inf",
        ),
        ({"jobs": {"a": {"command": ["true"], "jitter_s": 1e300}}}, "jobs.a.jitter_s: 1e+300 is above the maximum"),
        (
            {"jobs": {"a": {"command": ["true"], "max_concurrency": 10**20}}},
            "jobs.a.max_concurrency: 100000000000000000000 is out of range (must be at most",
        ),
        ({"jobs": {"a": {"command": ["true"], "env": {"A": 1}}}}, "jobs.a.env.A: must be a string, not an integer"),
        ({"jobs": {"a": {"command": ["true", 5]}}}, "jobs.a.command: must be a list of strings, found an integer"),
        (
            {"jobs": {"a": {"command": ["true"], "schedule": "0 0 30 2 *"}}},
            "jobs.a.schedule: '0 0 30 2 *' is not a valid cron expression",
        ),
        (
            {"jobs": {"a": {"command": ["true"], "schedule": "@reboot"}}},
            "jobs.a.schedule: '@reboot' is not a valid cron expression",
        ),
        ({"jobs": 5}, "jobs: must be a table, not an integer"),
        ({"server": 5}, "server: must be a table, not an integer"),
        ({"scheduler": {"timezone": ""}}, "scheduler.timezone: '' is not a known time zone"),
        ({"auth": {"tokens": [{"name": "x", "token": "short"}]}}, "auth.tokens[0].token: too short"),
        ({"auth": {"tokens": [{"name": "x", "token": "0123456789", "note": "y"}]}}, "auth.tokens[0].note: unknown key"),
        ({"server": {"host": "192.168.1.10"}}, "server.host: '192.168.1.10' is not a loopback address"),
        ({"server": {"host": "::"}}, "server.host: '::' is not a loopback address"),
        ({"jobs": {"a": {"shell": ""}}}, "jobs.a.shell: must not be empty"),
        # Two names for one secret: which scope would it have? A secret that could never be sent.
        (
            {
                "auth": {
                    "tokens": [
                        {"name": "x", "token": "0123456789", "scope": "read"},
                        {"name": "y", "token": "0123456789", "scope": "admin"},
                    ]
                }
            },
            "auth.tokens[1].token: the same secret as auth.tokens[0] ('x')",
        ),
        (
            {"auth": {"tokens": [{"name": "x", "token": "0123456789 "}]}},
            "auth.tokens[0].token: must not start or end with white space",
        ),
        ({"metrics": {"token": " 0123456789"}}, "metrics.token: must not start or end with white space"),
        # What the system cannot take (a NUL, an environment name with "="): refused here, not at the first run.
        ({"jobs": {"a": {"command": ["true"], "cwd": "a\0b"}}}, "jobs.a.cwd: must not contain a NUL character"),
        ({"jobs": {"a": {"command": ["echo", "a\0b"]}}}, "jobs.a.command: must not contain a NUL character"),
        ({"jobs": {"a": {"shell": "true\0"}}}, "jobs.a.shell: must not contain a NUL character"),
        ({"store": {"path": "x\0.db"}}, "store.path: must not contain a NUL character"),
        ({"jobs": {"a": {"command": ["true"], "env": {"A": "x\0y"}}}}, "jobs.a.env.A: must not contain a NUL"),
        ({"jobs": {"a": {"command": ["true"], "env": {"A=B": "x"}}}}, "jobs.a.env: 'A=B' is not a valid name"),
        ({"jobs": {"a": {"command": ["true"], "env": {"": "x"}}}}, "jobs.a.env: '' is not a valid name"),
        ({"jobs": {"a": {"shell": "  \n"}}}, "jobs.a.shell: must not be empty"),
        ({"jobs": {"a": {"command": ["", "x"]}}}, "jobs.a.command: the program (its first item) must not be empty"),
        (
            {"server": {"cors_origins": ["https://app.example.com/"]}},
            "server.cors_origins[0]: 'https://app.example.com/' is not an origin",
        ),
        ({"server": {"cors_origins": ["*", "app.example.com"]}}, "server.cors_origins[1]: 'app.example.com' is not"),
        ({"server": {"cors_origins": ["ftp://x"]}}, "server.cors_origins[0]: 'ftp://x' is not an origin"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_without_tokens_loopback_hosts_are_served(host):
    assert parse({"server": {"host": host}}).server.host == host


def test_token_env_and_non_loopback_with_auth():
    config = parse(
        {
            "server": {"host": "0.0.0.0"},
            "auth": {"tokens": [{"name": "ci", "token_env": "CI_TOKEN", "scope": "trigger"}]},
        },
        environ={"CI_TOKEN": "s3cret-token-value"},
    )
    assert config.auth.tokens[0].token == "s3cret-token-value"
    assert "s3cret" not in repr(config.auth.tokens[0])


def test_scheduler_zone_defaults_to_tz_then_utc():
    assert parse({}, environ={"TZ": "Europe/Skopje"}).scheduler.timezone == "Europe/Skopje"
    assert parse({}, environ={"TZ": "Not/AZone"}).scheduler.timezone == "UTC"
    job = parse({"scheduler": {"timezone": "Asia/Tokyo"}, "jobs": {"a": {"command": ["true"]}}}).jobs["a"]
    assert job.timezone == "Asia/Tokyo"


def test_example_config_is_valid():
    config = load_config(ROOT / "jobd.toml.example", environ={})
    assert "hello" in config.jobs
    assert config.store.path == ROOT / "state" / "jobd.db"


def test_toml_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "jobd", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_a_handler_module_that_exits_at_import_is_a_config_error(tmp_path):
    # sys.exit() in a handler's module must not end `jobd check` (or a daemon re-reading its config).
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "jobd.toml").write_text('[jobs.a]\nhandler = "exits_at_import:run"\n')
    result = run_cli("check", "-c", "jobd.toml", cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr == "jobd: invalid config: jobs.a.handler: cannot import 'exits_at_import': SystemExit: 3\n"


def test_check_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[jobs.nightly]\ncommand = ["true"]\nschedule = "61 * * * *"\n')
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "jobs.nightly.schedule" in result.stderr and "Traceback" not in result.stderr


def test_check_prints_next_fire_times(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[jobs.nightly]\ncommand = ["true"]\nschedule = "30 2 * * *"\ntimezone = "Europe/Skopje"\n')
    result = run_cli("check", "-c", str(good), "--from", "2026-10-24T12:00:00Z", "--count", "3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["jobs"]["nightly"]["next"] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    human = run_cli("check", "-c", str(good))
    assert human.returncode == 0
    assert len([line for line in human.stdout.splitlines() if "T02:30:00" in line]) == 5
    assert "nightly: 30 2 * * * (at 02:30 every day) in Europe/Skopje" in human.stdout
    for args, text in (
        (["--from", "9999-12-31T00:00:00Z", "--count", "2"], "there are no 2 fire times of"),
        (["--from", "yesterday"], "is not an ISO-8601 time"),
        (["--count", "0"], "--count must be"),
    ):
        odd = run_cli("check", "-c", str(good), *args)
        assert odd.returncode == 2 and text in odd.stderr and odd.stderr.count("\n") == 1, odd.stderr


def test_check_describes_an_h_schedule_by_the_minute_it_fires_at(tmp_path):
    config = tmp_path / "spread.toml"
    config.write_text('[jobs.spread]\ncommand = ["true"]\nschedule = "H * * * *"\ntimezone = "UTC"\n')
    fires = json.loads(run_cli("check", "-c", str(config), "--json").stdout)["jobs"]["spread"]["next"]
    [minute] = {datetime.fromisoformat(fire).minute for fire in fires}
    human = run_cli("check", "-c", str(config))
    assert f"spread: H * * * * (hourly at minute {minute}) in UTC" in human.stdout, human.stdout


def accepted_keys(monkeypatch) -> set[tuple[str, str]]:
    """Every (table, key) the parser reads, found by watching it parse a config that has each kind
    of table: a token and a job. Tables are named as in the example: auth.tokens[0] is auth, jobs.x is jobs.*."""
    seen: set[tuple[str, str]] = set()
    real_get, real_table = Table.get, Table.table

    def table_name(path: str) -> str:
        if path.startswith("jobs."):
            return "jobs.*"
        return path.split("[")[0].removesuffix(".tokens")

    def get(self, name, *args, **kwargs):
        seen.add((table_name(self.path), name))
        return real_get(self, name, *args, **kwargs)

    def table(self, name):
        if self.path == "":
            seen.add(("", name))
        return real_table(self, name)

    monkeypatch.setattr(Table, "get", get)
    monkeypatch.setattr(Table, "table", table)
    parse({"auth": {"tokens": [{"name": "x", "token": "0123456789"}]}, "jobs": {"j": {"command": ["true"]}}})
    monkeypatch.undo()
    return seen


def example_keys() -> set[tuple[str, str]]:
    """(table, key) for each key the example shows, set or commented out."""
    keys: set[tuple[str, str]] = set()
    table = ""
    for line in (ROOT / "jobd.toml.example").read_text().splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            table = "jobs.*" if header.group(1).startswith("jobs.") else header.group(1)
            keys.add(("", table.split(".")[0]))
            continue
        for key in re.findall(r"(?:^#?|[{,])\s*([a-z_][a-z0-9_]*)\s*=", line):
            keys.add((table, key))
    return keys


def test_the_example_documents_every_key(monkeypatch):
    missing = sorted(accepted_keys(monkeypatch) - example_keys())
    assert not missing, f"jobd.toml.example does not show {missing}"


def readme_config_rows() -> dict[tuple[str, str], str]:
    """(table, key) → the default cell, for each row of the key tables of docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z_.\[\]][a-z0-9_.\[\]]*)`", cells[0]) if line.startswith("| `") else None
        if name is None:
            continue
        table, _, key = name.group(1).rpartition(".")
        rows[(table.removesuffix(".tokens[]") or "jobs.*", key)] = cells[1]
    return rows


def test_the_docs_document_every_key_with_its_default(monkeypatch):
    rows = readme_config_rows()
    accepted = {key for key in accepted_keys(monkeypatch) if key[0]}
    assert not sorted(accepted - rows.keys()), "docs/configuration.md's tables lack these keys"
    assert not sorted(rows.keys() - accepted), "docs/configuration.md documents keys the parser does not take"
    defaults = parse({"jobs": {"j": {"command": ["true"]}}})
    token = parse({"auth": {"tokens": [{"name": "x", "token": "0123456789"}]}}).auth.tokens[0]
    checked = 0
    for (table, key), cell in rows.items():
        if table == "jobs.*":
            owner = defaults.jobs["j"]
        elif table == "auth" and key not in ("tokens", "ticket_ttl_s"):
            owner = token
        else:
            owner = getattr(defaults, table)
        literal = re.fullmatch(r"`([^`]+)`", cell)
        if cell == "none":
            expected = None
        elif literal and re.fullmatch(r"[a-z]+\.[a-z_]+", literal.group(1)):  # another key's value
            section, _, name = literal.group(1).partition(".")
            expected = getattr(getattr(defaults, section), name)
        elif literal:
            expected = tomllib.loads(f"v = {literal.group(1)}")["v"]
        else:
            continue  # said in words: required, or taken from the environment
        actual = getattr(owner, key)
        actual = list(actual) if isinstance(actual, tuple) else str(actual) if isinstance(actual, Path) else actual
        assert actual == expected, f"docs/configuration.md: {table}.{key} defaults to {cell}, the parser to {actual!r}"
        checked += 1
    assert checked >= 40
