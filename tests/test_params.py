"""Typed parameters end to end, on both backends: the config, the schema, validation of triggers,
defaults on every kind of run, and secrets hidden in every answer, event and log."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import BACKENDS, PYTHON
from jsonschema import Draft202012Validator
from params_jobs import digest
from ssehelp import SSEReader

from jobd.config import ConfigError, parse_config
from jobd.config.paramcheck import coerce, validate
from jobd.models import RunStatus
from jobd.scheduler import FireRequest

SECRET = "s3cr3t-Value-42"
TYPED = {
    "handler": "params_jobs:tell",
    "overlap": "allow",
    "max_concurrency": 10,
    "params": {
        "limit": {"type": "integer", "min": 1, "max": 100, "default": 10, "description": "rows at most"},
        "ratio": {"type": "number", "min": 0, "max": 1},
        "dry_run": {"type": "boolean", "default": False},
        "mode": {"type": "enum", "enum": ["fast", "full"], "default": "fast"},
        "region": {"type": "string", "pattern": "^[a-z]{2}-[a-z]+$", "required": True},
        "tags": {"type": "array", "max": 3},
        "extra": {"type": "object"},
        "token": {"type": "string", "secret": True},
    },
}
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


# -- the config -----------------------------------------------------------------------------------


def _job(params: dict, **job: object) -> dict:
    return {"jobs": {"j": {"handler": "sample_jobs:noop", **job, "params": params}}}


@pytest.mark.parametrize(
    ("params", "job", "message"),
    [
        ({"n": {"type": "int"}}, {}, "jobs.j.params.n.type: 'int' is not one of string"),
        ({"n": {}}, {}, "jobs.j.params.n.type: required"),
        (
            {"n": {"type": "integer", "default": "5"}},
            {},
            "jobs.j.params.n.default: does not fit the parameter: must be an integer",
        ),
        (
            {"n": {"type": "integer", "min": 1, "default": 0}},
            {},
            "jobs.j.params.n.default: does not fit the parameter: must be an integer ≥ 1",
        ),
        ({"n": {"type": "integer", "min": 5, "max": 1}}, {}, "jobs.j.params.n.min: 5 is above max 1"),
        (
            {"n": {"type": "string", "pattern": "(["}},
            {},
            "jobs.j.params.n.pattern: '([' is not a valid regular expression",
        ),
        ({"n": {"type": "enum"}}, {}, "jobs.j.params.n.enum: required for a parameter of type enum"),
        ({"n": {"type": "integer", "enum": [1, "a"]}}, {}, "jobs.j.params.n.enum[1]: must be an integer"),
        ({"n": {"type": "boolean", "min": 1}}, {}, "jobs.j.params.n.min: not for a parameter of type boolean"),
        (
            {"n": {"type": "integer", "secret": True}},
            {},
            "jobs.j.params.n.secret: only a string parameter can be secret",
        ),
        ({"n": {"type": "string", "colour": "red"}}, {}, "jobs.j.params.n.colour: unknown key"),
        (
            {"n": {"type": "string", "required": True}},
            {"schedule": "* * * * *"},
            "jobs.j.params.n.required: the job has a schedule",
        ),
        (
            {"n": {"type": "string", "required": True, "default": "x"}},
            {},
            "jobs.j.params.n.required: a parameter with a default",
        ),
        ({"n": "integer"}, {}, "jobs.j.params.n: must be a table"),
        ({"9x": {"type": "string"}}, {}, "jobs.j.params.9x: parameter names use"),
    ],
)
def test_config_errors_name_the_key(params, job, message, backend):
    if backend != "sqlite":
        pytest.skip("the config does not depend on the backend")
    with pytest.raises(ConfigError) as raised:
        parse_config(_job(params, **job), environ={})
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_schema_is_draft_2020_12_and_agrees_with_the_validator(backend):
    if backend != "sqlite":
        pytest.skip("the config does not depend on the backend")
    job = parse_config({"jobs": {"t": TYPED}}, environ={}).jobs["t"]
    schema = job.params.json_schema()
    assert schema is not None
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["region"]
    assert schema["properties"]["token"] == {"type": "string", "writeOnly": True, "format": "password"}
    assert schema["properties"]["limit"] == {
        "type": "integer",
        "description": "rows at most",
        "minimum": 1,
        "maximum": 100,
        "default": 10,
    }
    reference = Draft202012Validator(schema)
    samples = [
        {"region": "eu-west"},
        {"region": "EU"},
        {"region": "eu-west", "limit": 0},
        {"region": "eu-west", "limit": 5.0},
        {"region": "eu-west", "limit": True},
        {"region": "eu-west", "ratio": 1.5},
        {"region": "eu-west", "mode": "slow"},
        {"region": "eu-west", "tags": [1, 2, 3, 4]},
        {"region": "eu-west", "extra": []},
        {"region": "eu-west", "other": 1},
        {},
    ]
    for sample in samples:
        _, problems = validate(schema, sample)
        assert (not problems) == reference.is_valid(sample), sample


def test_command_line_values_take_the_declared_type(backend):
    if backend != "sqlite":
        pytest.skip("no daemon")
    props = parse_config({"jobs": {"t": TYPED}}, environ={}).jobs["t"].params.json_schema()["properties"]
    assert coerce(props["limit"], "7") == 7
    assert coerce(props["limit"], "seven") == "seven"
    assert coerce(props["ratio"], "0.5") == 0.5
    assert coerce(props["dry_run"], "true") is True
    assert coerce(props["dry_run"], "no") is False
    assert coerce(props["tags"], '["a"]') == ["a"]
    assert coerce(props["mode"], "full") == "full"
    assert coerce(None, "7") == "7"


# -- triggers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"region": "eu-west", "limit": 0}, "params.limit: must be an integer ≥ 1 and ≤ 100"),
        ({"region": "eu-west", "limit": "5"}, "params.limit: must be an integer ≥ 1 and ≤ 100"),
        ({"region": "eu-west", "ratio": "half"}, "params.ratio: must be a number ≥ 0 and ≤ 1"),
        ({"region": "eu-west", "dry_run": 1}, "params.dry_run: must be true or false"),
        ({"region": "eu-west", "mode": "slow"}, 'params.mode: must be one of "fast", "full"'),
        ({"region": "EU"}, "params.region: must match the pattern ^[a-z]{2}-[a-z]+$"),
        ({"region": "eu-west", "tags": "a,b"}, "params.tags: must be an array of at most 3 items"),
        ({"region": "eu-west", "tags": [1, 2, 3, 4]}, "params.tags: must be an array of at most 3 items"),
        ({"region": "eu-west", "extra": [1]}, "params.extra: must be an object"),
        ({"region": "eu-west", "token": 5}, "params.token: must be a string"),
        ({}, "params.region: required"),
        ({"region": "eu-west", "colour": "red"}, "params.colour: unknown parameter (expected limit, ratio"),
    ],
)
async def test_a_bad_param_is_a_400_naming_it(start_daemon, params, detail):
    h = await start_daemon({"t": TYPED})
    problem = await h.trigger("t", params, expect=400)
    assert problem["status"] == 400
    assert problem["detail"].startswith(detail), problem
    assert problem["param"] == detail.split(":")[0].removeprefix("params.")
    assert problem["errors"][0]["param"] == problem["param"]
    queue = await h.get_json("/api/v1/queue")
    assert sum(queue["counts"].values()) == 0


async def test_every_bad_param_is_listed_and_a_batch_names_its_item(start_daemon):
    h = await start_daemon({"t": TYPED})
    problem = await h.trigger("t", {"limit": 0, "mode": "x"}, expect=400)
    assert [e["param"] for e in problem["errors"]] == ["limit", "mode", "region"]
    assert problem["detail"].endswith("(and 2 more)")
    response = await h.client.post(
        "/api/v1/jobs/t/trigger", json={"runs": [{"params": {"region": "eu-a"}}, {"params": {"region": 1}}]}
    )
    problem = await response.json()
    assert response.status == 400
    assert problem["detail"] == "runs[1].params.region: must be a string"


async def test_defaults_are_filled_before_the_run_is_stored(start_daemon):
    h = await start_daemon({"t": TYPED})
    run = await h.trigger("t", {"region": "eu-west", "limit": 5.0})
    assert run["params"] == {"region": "eu-west", "limit": 5, "dry_run": False, "mode": "fast"}
    done = await h.finished(run["id"])
    assert done.status is RunStatus.COMPLETED
    assert done.params == {"region": "eu-west", "limit": 5, "dry_run": False, "mode": "fast"}
    assert done.result["types"] == {"region": "str", "limit": "int", "dry_run": "bool", "mode": "str"}


async def test_a_job_without_params_takes_any_object(start_daemon):
    h = await start_daemon({"noop": {"handler": "sample_jobs:noop"}})
    run = await h.trigger("noop", {"anything": [1, {"x": None}]})
    assert run["params"] == {"anything": [1, {"x": None}]}
    job = await h.get_json("/api/v1/jobs/noop")
    assert job["job"]["params_schema"] is None


async def test_the_job_shows_its_schema(start_daemon):
    h = await start_daemon({"t": TYPED})
    schema = (await h.get_json("/api/v1/jobs/t"))["job"]["params_schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["mode"] == {"enum": ["fast", "full"], "default": "fast"}
    listed = (await h.get_json("/api/v1/jobs"))["jobs"][0]
    assert listed["params_schema"] == schema


async def test_cron_fires_and_backfills_get_the_defaults(start_daemon):
    scheduled = {
        "handler": "sample_jobs:noop",
        "schedule": "0 * * * *",
        "overlap": "allow",
        "max_concurrency": 10,
        "params": {"limit": {"type": "integer", "default": 3}, "label": {"type": "string"}},
    }
    h = await start_daemon({"c": scheduled})
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    await h.daemon.runs.fire(FireRequest("c", at, catchup=False))
    runs = (await h.get_json("/api/v1/runs?job=c"))["runs"]
    assert [(r["triggered_by"], r["params"]) for r in runs] == [("cron", {"limit": 3})]
    start = datetime.now(UTC) - timedelta(hours=3)
    response = await h.client.post(
        "/api/v1/jobs/c/backfill",
        json={"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat()},
    )
    made = (await response.json())["runs"]
    assert response.status == 202 and len(made) == 2
    assert all(r["params"] == {"limit": 3} for r in made)
    for run in [*runs, *made]:
        assert (await h.finished(run["id"])).result == {"echo": {"limit": 3}}


async def test_a_retry_keeps_the_stored_params(start_daemon):
    job = {"handler": "params_jobs:leak_in_error", "params": {"token": {"type": "string", "secret": True}}}
    h = await start_daemon({"f": job})
    run = await h.trigger("f", {"token": SECRET})
    assert (await h.finished(run["id"])).status is RunStatus.FAILED
    response = await h.client.post(f"/api/v1/runs/{run['id']}/retry")
    again = (await response.json())["run"]
    assert response.status == 202 and again["params"] == {"token": "***"}
    stored = await h.finished(again["id"])
    assert stored.params == {"token": SECRET}
    assert stored.error == "RuntimeError: login refused for ***"


# -- secrets --------------------------------------------------------------------------------------


async def test_a_secret_reaches_the_handler_and_is_hidden_everywhere_else(start_daemon):
    h = await start_daemon({"t": TYPED})
    accepted = await h.trigger("t", {"region": "eu-west", "token": SECRET})
    assert accepted["params"]["token"] == "***"
    done = await h.finished(accepted["id"])
    assert done.status is RunStatus.COMPLETED
    assert done.params["token"] == SECRET  # stored: a retry needs it
    assert done.result["digest"] == digest(SECRET)  # the handler had the real value
    assert done.result["echo"] == "***"
    seen = [
        await h.get_json(f"/api/v1/runs/{accepted['id']}"),
        await h.get_json("/api/v1/runs?job=t"),
        await h.get_json("/api/v1/jobs/t"),
        await h.get_json("/api/v1/runs/last?job=t"),
    ]
    log = await (await h.client.get(f"/api/v1/runs/{accepted['id']}/log")).text()
    run = seen[0]["run"]
    assert run["params"]["token"] == "***"
    assert "connecting with ***" in run["log_tail"] and "connecting with ***" in log
    assert run["message"] == "token *** accepted"
    response = await h.client.get(f"/api/v1/runs/{accepted['id']}", headers={"Accept": "text/event-stream"})
    events = await SSEReader(response).until(lambda m: m.type == "status_update" and m.data["status"] == "COMPLETED")
    response.close()
    assert events[-1].data["result"]["echo"] == "***"
    for shown in [accepted, *seen, log, [e.data for e in events]]:
        assert SECRET not in str(shown)


async def test_a_secret_is_hidden_in_a_commands_output_and_error(start_daemon, capsys):
    script = (
        "import json, os, sys\n"
        "token = json.loads(os.environ['JOBD_PARAMS'])['token']\n"
        "print('got', os.environ['JOBD_PARAMS'])\n"
        "print('::progress::10 with', token)\n"
        "print('::result::' + json.dumps({'t': token, 'digest': __import__('hashlib').sha256(token.encode()).hexdigest()}))\n"
        "print('bad', token, file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    job = {"command": [PYTHON, "-c", script], "params": {"token": {"type": "string", "secret": True}}}
    h = await start_daemon({"cmd": job})
    run = await h.trigger("cmd", {"token": SECRET})
    done = await h.finished(run["id"])
    assert done.status is RunStatus.FAILED
    shown = await h.get_json(f"/api/v1/runs/{run['id']}")
    log = await (await h.client.get(f"/api/v1/runs/{run['id']}/log")).text()
    assert '"token":"***"' in log
    assert done.result == {"t": "***", "digest": digest(SECRET)}
    assert done.error is not None and "bad ***" in done.error
    for text in (str(shown), log, done.log_tail, done.error or "", str(done.result), str(capsys.readouterr())):
        assert SECRET not in text


async def test_the_served_openapi_document_carries_each_jobs_params(start_daemon):
    h = await start_daemon({"t": TYPED, "noop": {"handler": "sample_jobs:noop"}})
    served = await h.get_json("/api/v1/openapi.json")
    schemas = served["components"]["schemas"]
    assert schemas["JobParams.t"]["properties"]["limit"]["minimum"] == 1
    assert "JobParams.noop" not in schemas and "/api/v1/jobs/noop/trigger" not in served["paths"]
    operation = served["paths"]["/api/v1/jobs/t/trigger"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TriggerRequest.t"
    }
    assert schemas["TriggerRequest.t"]["properties"]["params"] == {"$ref": "#/components/schemas/JobParams.t"}
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)


# -- the command line -----------------------------------------------------------------------------


async def jobd_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobd",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate(stdin or b"")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_reads_typed_values_and_refuses_bad_ones_before_sending(start_daemon):
    h = await start_daemon({"t": TYPED})
    url = str(h.client.make_url("")).rstrip("/")
    code, out, err = await jobd_cli(
        "trigger",
        "t",
        "--url",
        url,
        "--json",
        "-p",
        "region=eu-west",
        "-p",
        "limit=7",
        "-p",
        "dry_run=true",
        "-p",
        "ratio=0.25",
        "-p",
        'tags=["a"]',
        "-p",
        f"token={SECRET}",
    )
    assert code == 0, err
    run = json.loads(out)["run"]
    assert run["params"] == {
        "region": "eu-west",
        "limit": 7,
        "dry_run": True,
        "ratio": 0.25,
        "tags": ["a"],
        "token": "***",
        "mode": "fast",
    }
    done = await h.finished(run["id"])
    assert done.result["digest"] == digest(SECRET)
    for flags, lines in [
        (["-p", "region=eu-west", "-p", "limit=0"], ["params.limit: must be an integer ≥ 1 and ≤ 100"]),
        (["-p", "region=eu-west", "-p", "limit=many"], ["params.limit: must be an integer ≥ 1 and ≤ 100"]),
        (
            ["-p", 'limit:="5"', "-p", "mode=slow"],
            [
                "params.limit: must be an integer ≥ 1 and ≤ 100",
                'params.mode: must be one of "fast", "full"',
                "params.region: required",
            ],
        ),
        (["-p", "region=eu-west", "-p", "colour=red"], ["params.colour: unknown parameter"]),
    ]:
        code, out, err = await jobd_cli("trigger", "t", "--url", url, *flags)
        assert (code, out) == (2, ""), (flags, err)
        got = err.splitlines()
        assert len(got) == len(lines) and all(g.startswith(f"jobd: {w}") for g, w in zip(got, lines)), (flags, err)
    code, out, err = await jobd_cli(
        "trigger", "t", "--url", url, "--stdin", stdin=b'{"region": "eu-a"}\n{"region": "eu-a", "limit": -1}\n'
    )
    assert (code, err.strip()) == (2, "jobd: --stdin run 2: params.limit: must be an integer ≥ 1 and ≤ 100")
    queue = await h.get_json("/api/v1/queue")
    assert sum(queue["counts"].values()) == 1  # only the first command sent a run
