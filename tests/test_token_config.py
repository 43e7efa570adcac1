"""`jobs` of a token in the config, as `jobd check` sees it: one line naming the key for a bad
value, a warning for a pattern that matches no job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobd.config import ConfigError, parse_config
from jobd.config.tokens import matches

JOBS = {"backup-db": {"command": ["true"]}, "report": {"command": ["true"]}}


def config_with(jobs_value: object) -> dict[str, object]:
    token = {"name": "backups", "token": "backups-token-123", "scope": "trigger", "jobs": jobs_value}
    return {"auth": {"tokens": [{"name": "ops", "token": "ops-token-12345"}, token]}, "jobs": JOBS}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("backup-*", "auth.tokens[1].jobs: must be a list of strings, not a string"),
        ([1], "auth.tokens[1].jobs: must be a list of strings, found an integer"),
        ([], "auth.tokens[1].jobs: an empty list lets the token see no job"),
        (["backup-*", ""], "auth.tokens[1].jobs[1]: '' is not a job name pattern"),
        (["backup db"], "auth.tokens[1].jobs[0]: 'backup db' is not a job name pattern"),
        (["backup/*"], "auth.tokens[1].jobs[0]: 'backup/*' is not a job name pattern"),
        (["backup-[ab"], "auth.tokens[1].jobs[0]: 'backup-[ab' has a '[' without its ']'"),
        (["x" * 129], "is not a job name pattern"),
    ],
)
def test_a_bad_value_names_the_key(value, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(config_with(value), environ={})
    assert message in str(raised.value)


def test_patterns_and_warnings():
    config = parse_config(config_with(["backup-*", "rep?rt", "[!b]*", "nothing-*"]), environ={})
    token = config.auth.tokens[1]
    assert token.jobs == ("backup-*", "rep?rt", "[!b]*", "nothing-*")
    assert config.auth.tokens[0].jobs == ()
    assert config.warnings == ("auth.tokens[1].jobs[3]: 'nothing-*' matches no configured job",)
    assert matches(token.jobs, "backup-db") and matches(token.jobs, "report")
    assert not matches(("backup-*",), "Backup-db")  # case-sensitive, as job names are
    assert not matches(("[!b]*",), "backup-db") and matches(("[!b]*",), "report")


def test_jobd_check_prints_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[auth.tokens]]\nname = "backups"\ntoken = "backups-token-123"\njobs = ["backup-[ab"]\n'
        '[jobs.backup-db]\ncommand = ["true"]\n'
    )
    result = subprocess.run([sys.executable, "-m", "jobd", "check", "-c", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "auth.tokens[0].jobs[0]" in result.stderr and "Traceback" not in result.stderr
