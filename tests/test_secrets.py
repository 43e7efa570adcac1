"""secret_env end to end, on both backends: the config, the values a command and a Python handler
get, and every place a run's text is shown or kept (log file, log_tail, message, result, error,
the run's JSON, streams, jobd's own log, the audit log) showing "***" instead."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, PYTHON, Harness
from secret_jobs import digest
from ssehelp import SSEReader

from jobd.app import Daemon
from jobd.config import ConfigError, parse_config
from jobd.models import RunStatus
from jobd.web import create_app

PASSWORD = "pa55-Word-from-a-file"
TOKEN = "tok-from-jobds-environment"
ENVIRON = {"PATH": "/usr/bin:/bin", "APP_TOKEN": TOKEN}
COMMAND = (
    "import hashlib, json, os, sys\n"
    "pw, tok = os.environ['DB_PASSWORD'], os.environ['TOKEN']\n"
    "print('password is', pw)\n"
    "print('::progress::50 using', tok)\n"
    "d = lambda s: hashlib.sha256(s.encode()).hexdigest()\n"
    "print('::result::' + json.dumps({'pw': pw, 'digest': d(pw), 'tok': d(tok)}))\n"
    "print('failed with', pw, file=sys.stderr)\n"
    "sys.exit(2)\n"
)


@pytest.fixture
def credential(tmp_path: Path) -> Path:
    path = tmp_path / "credentials" / "db"
    path.parent.mkdir()
    path.write_text(PASSWORD + "\n")  # as `echo ... > file` writes it
    return path


@pytest.fixture
def start(aiohttp_client: Any, make_config: Any) -> Any:
    async def start(jobs: dict[str, Any], **sections: Any) -> Harness:
        daemon = Daemon(make_config(jobs, **sections), environ=ENVIRON)
        return Harness(await aiohttp_client(create_app(daemon)), daemon)

    return start


def secret_env(credential: Path) -> dict[str, Any]:
    return {"DB_PASSWORD": {"file": str(credential)}, "TOKEN": {"env_var": "APP_TOKEN"}}


def assert_hidden(*shown: Any) -> None:
    for item in shown:
        assert PASSWORD not in str(item) and TOKEN not in str(item)


async def everything_shown(h: Harness, run_id: int) -> list[Any]:
    """Each place a run's text can be read from outside."""
    run = await h.get_json(f"/api/v1/runs/{run_id}")
    log = await (await h.client.get(f"/api/v1/runs/{run_id}/log")).text()
    response = await h.client.get(f"/api/v1/runs/{run_id}", headers={"Accept": "text/event-stream"})
    events = await SSEReader(response).until(
        lambda m: m.type == "status_update" and m.data["status"] in ("FAILED", "COMPLETED")
    )
    response.close()
    audit = await h.get_json("/api/v1/audit")
    assert audit["records"], "the trigger is audited"
    stored = await h.daemon.store.get_run(run_id)
    assert stored is not None
    return [run, log, [e.data for e in events], audit, await h.get_json("/api/v1/runs"), stored]


async def open_firehose(h: Harness) -> SSEReader:
    """Every run's changes and log lines as they happen (opened before the run starts)."""
    reader = SSEReader(await h.client.get("/api/v1/events?log=1", headers={"Accept": "text/event-stream"}))
    await reader.until(lambda m: m.type == "connected")
    return reader


async def live_events(reader: SSEReader, run_id: int) -> list[dict[str, Any]]:
    messages = await reader.until(
        lambda m: (
            m.type == "status_update" and m.data["run_id"] == run_id and m.data["status"] in ("FAILED", "COMPLETED")
        )
    )
    return [m.data for m in messages if m.data.get("run_id") == run_id]


# -- the config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"secret_env": {"PW": {}}}, "jobs.j.secret_env.PW: give exactly one of file, env_var"),
        ({"secret_env": {"PW": {"file": "/x", "env_var": "Y"}}}, "jobs.j.secret_env.PW: give exactly one of"),
        ({"secret_env": {"PW": {"path": "/x"}}}, "jobs.j.secret_env.PW.path: unknown key"),
        ({"secret_env": {"1PW": {"file": "/x"}}}, "jobs.j.secret_env.1PW: '1PW' is not a valid name"),
        ({"secret_env": {"JOBD_PW": {"file": "/x"}}}, "jobs.j.secret_env.JOBD_PW: JOBD_* variables are jobd's own"),
        ({"secret_env": {"PW": {"env_var": "A-B"}}}, "jobs.j.secret_env.PW.env_var: 'A-B' is not a valid name"),
        ({"secret_env": {"PW": {"file": ""}}}, "jobs.j.secret_env.PW.file: must not be empty"),
        ({"secret_env": {"PW": "/x"}}, "jobs.j.secret_env.PW: must be a table"),
        ({"secret_env": "PW", "env": {}}, "jobs.j.secret_env: must be a table like"),
        (
            {"secret_env": {"PW": {"env_var": "X"}}, "env": {"PW": "1"}},
            "jobs.j.env.PW: also a secret_env variable; give it in one of them",
        ),
    ],
)
def test_config_errors_name_the_key(job: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": {"j": {"handler": "sample_jobs:noop", **job}}}, environ={})
    assert str(caught.value).startswith(message), str(caught.value)


def test_defaults_apply_to_every_job_and_a_job_replaces_a_variable(tmp_path: Path) -> None:
    config = parse_config(
        {
            "defaults": {"secret_env": {"PW": {"file": "pw"}, "TOKEN": {"env_var": "T"}}},
            "jobs": {
                "a": {"handler": "sample_jobs:noop"},
                "b": {"handler": "sample_jobs:noop", "secret_env": {"PW": {"env_var": "B_PW"}, "X": {"env_var": "T"}}},
            },
        },
        environ={"T": "set"},
        base_dir=tmp_path,
    )
    a, b = config.jobs["a"].secret_env, config.jobs["b"].secret_env
    assert [(s.name, s.file, s.env_var) for s in a] == [("PW", str(tmp_path / "pw"), None), ("TOKEN", None, "T")]
    assert [(s.name, s.file, s.env_var) for s in b] == [("PW", None, "B_PW"), ("TOKEN", None, "T"), ("X", None, "T")]
    # Once per source, not once per job: the default's file, b's variable.
    assert config.warnings == (
        f"defaults.secret_env.PW.file: {tmp_path / 'pw'} is not readable now; its runs fail until it is",
        "jobs.b.secret_env.PW.env_var: B_PW is not set now; its runs fail until it is",
    )


async def test_jobd_check_warns_of_a_credential_it_cannot_read(tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobd.db"}"\n'
        '[jobs.backup]\ncommand = ["true"]\n'
        'secret_env = { PGPASSWORD = { file = "/run/credentials/jobd.service/pg" } }\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobd",
        "check",
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert (
        "jobd: warning: jobs.backup.secret_env.PGPASSWORD.file: /run/credentials/jobd.service/pg is not "
        "readable now; its runs fail until it is"
    ) in err.decode()


# -- runs -----------------------------------------------------------------------------------------

pytestmark_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytestmark_backends
async def test_a_command_gets_its_secrets_and_they_are_hidden_everywhere(start, credential, capsys):
    h = await start({"cmd": {"command": [PYTHON, "-c", COMMAND], "secret_env": secret_env(credential)}})
    job = await h.get_json("/api/v1/jobs/cmd")
    assert job["job"]["secret_env"] == {"DB_PASSWORD": "***", "TOKEN": "***"}
    firehose = await open_firehose(h)
    run = await h.trigger("cmd")
    done = await h.finished(run["id"])
    live = await live_events(firehose, run["id"])
    firehose.response.close()
    assert {"type": "log", "run_id": run["id"], "job": "cmd", "stream": "stdout", "line": "password is ***"} in [
        {k: e.get(k) for k in ("type", "run_id", "job", "stream", "line")} for e in live
    ]
    assert any(e["type"] == "status_update" and e["message"] == "using ***" for e in live)
    assert done.status is RunStatus.FAILED
    # The child really had both values (by their digests), and nothing shows them.
    assert done.result == {"pw": "***", "digest": digest(PASSWORD), "tok": digest(TOKEN)}
    assert done.error == "exit code 2: failed with ***"
    assert done.message == "using ***"
    assert "password is ***" in done.log_tail and "failed with ***" in done.log_tail
    shown = await everything_shown(h, run["id"])
    assert "password is ***" in shown[1]
    captured = capsys.readouterr()
    assert "run_finished" in captured.out and "failed with ***" in captured.out  # jobd's own log
    assert_hidden(*shown, job, live, captured)


@pytestmark_backends
async def test_a_handler_gets_ctx_secrets_and_they_are_hidden_everywhere(start, credential, capsys):
    h = await start(
        {
            "tell": {"handler": "secret_jobs:tell", "secret_env": secret_env(credential)},
            "refuse": {"handler": "secret_jobs:refuse", "secret_env": secret_env(credential)},
        }
    )
    firehose = await open_firehose(h)
    run = await h.trigger("tell")
    done = await h.finished(run["id"])
    live = await live_events(firehose, run["id"])
    firehose.response.close()
    assert any(e["type"] == "log" and e["line"] == "connecting with ***" for e in live)
    assert done.status is RunStatus.COMPLETED
    assert done.result == {"echo": "***", "digest": digest(PASSWORD), "in_environ": False}
    assert done.message == "password *** accepted" and "connecting with ***" in done.log_tail
    failed = await h.finished((await h.trigger("refuse"))["id"])
    assert failed.status is RunStatus.FAILED
    assert failed.error == "RuntimeError: login refused for ***"
    assert "RuntimeError: login refused for ***" in failed.log_tail  # the traceback
    assert_hidden(
        *(await everything_shown(h, run["id"])), *(await everything_shown(h, failed.id)), live, capsys.readouterr()
    )


@pytestmark_backends
async def test_a_credential_that_cannot_be_read_fails_the_run_naming_it(start, credential, tmp_path):
    missing = tmp_path / "credentials" / "gone"
    short = tmp_path / "credentials" / "short"
    short.write_text("abc\n")
    h = await start(
        {
            "nofile": {"command": ["true"], "secret_env": {"PW": {"file": str(missing)}}},
            "novar": {"handler": "sample_jobs:noop", "secret_env": {"TOKEN": {"env_var": "NOT_SET_HERE"}}},
            "short": {"command": ["true"], "secret_env": {"PIN": {"file": str(short)}}},
        }
    )
    ends = {name: await h.finished((await h.trigger(name))["id"]) for name in ("nofile", "novar", "short")}
    assert {run.status for run in ends.values()} == {RunStatus.FAILED}
    assert ends["nofile"].error == f"secret_env.PW: cannot read {missing} (No such file or directory)"
    assert ends["novar"].error == "secret_env.TOKEN: environment variable NOT_SET_HERE is not set in jobd's environment"
    assert ends["short"].error == (
        f"secret_env.PIN (file {short}): the value is shorter than 4 characters, too short to be hidden in the "
        "run's output"
    )
    assert "abc" not in str(await h.get_json(f"/api/v1/runs/{ends['short'].id}"))
    # Read at each run's start: a credential put in place later is used by the next run.
    missing.write_text(PASSWORD)
    assert (await h.finished((await h.trigger("nofile"))["id"])).status is RunStatus.COMPLETED


@pytestmark_backends
async def test_a_secret_value_sent_in_params_is_hidden_before_it_is_stored(start, credential):
    h = await start({"tell": {"handler": "secret_jobs:tell", "secret_env": secret_env(credential)}})
    accepted = await h.trigger("tell", {"login": f"admin:{PASSWORD}", "list": [TOKEN], TOKEN: 1})
    assert accepted["params"] == {"login": "admin:***", "list": ["***"], "***": 1}
    done = await h.finished(accepted["id"])
    assert done.params == {"login": "admin:***", "list": ["***"], "***": 1}
    response = await h.client.post("/api/v1/jobs/tell/trigger", json={"runs": [{"params": {"p": PASSWORD}}]})
    [batch] = (await response.json())["runs"]
    assert response.status == 202 and batch["params"] == {"p": "***"}
    assert_hidden(accepted, done, batch, await h.get_json("/api/v1/runs"), await h.get_json("/api/v1/audit"))


@pytestmark_backends
async def test_defaults_secret_env_reaches_every_job(start, credential):
    h = await start(
        {"tell": {"handler": "secret_jobs:tell"}}, defaults={"secret_env": {"DB_PASSWORD": {"file": str(credential)}}}
    )
    assert (await h.get_json("/api/v1/jobs/tell"))["job"]["secret_env"] == {"DB_PASSWORD": "***"}
    done = await h.finished((await h.trigger("tell"))["id"])
    assert done.status is RunStatus.COMPLETED
    assert done.result == {"echo": "***", "digest": digest(PASSWORD), "in_environ": False}
