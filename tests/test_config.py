"""Configuration: every invalid input is refused with one line naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobd.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).parent.parent


def parse(raw, environ=None):
    return parse_config(raw, environ=environ or {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"jobs": {"a": {"command": ["true"], "schedule": "61 * * * *"}}},
         "jobs.a.schedule: '61 * * * *' is not a valid cron expression"),
        ({"jobs": {"a": {"command": ["true"], "timeoutt": 3}}}, "jobs.a.timeoutt: unknown key"),
        ({"jobs": {"a": {"command": ["true"], "timezone": "Mars/Olympus"}}},
         "jobs.a.timezone: 'Mars/Olympus' is not a known time zone"),
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
        ({"auth": {"tokens": [{"name": "x", "token": "0123456789", "scope": "god"}]}},
         "auth.tokens[0].scope: 'god' is not one of read, trigger, admin"),
        ({"auth": {"tokens": [{"name": "x", "token_env": "NOPE_TOKEN"}]}},
         "auth.tokens[0].token_env: environment variable NOPE_TOKEN is not set"),
        ({"auth": {"tokens": [{"name": "x"}]}}, "auth.tokens[0]: give exactly one of token or token_env"),
        ({"alerts": {"webhook_url": "ftp://x"}}, "alerts.webhook_url: 'ftp://x' must start with http"),
        ({"jobs": {"bad name!": {"command": ["true"]}}}, "jobs.bad name!: job names use letters"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_token_env_and_non_loopback_with_auth():
    config = parse(
        {"server": {"host": "0.0.0.0"}, "auth": {"tokens": [{"name": "ci", "token_env": "CI_TOKEN", "scope": "trigger"}]}},
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
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"
    ]
    human = run_cli("check", "-c", str(good))
    assert human.returncode == 0
    assert len([line for line in human.stdout.splitlines() if "T02:30:00" in line]) == 5
