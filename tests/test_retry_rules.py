"""Which failures are retried (`retry_on_exit_codes`, `no_retry_on_exit_codes`,
`retry_on_exceptions`), `pause_after_failures` and resume, against a real daemon on both
backends; and the config's refusals of these keys, one line naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BACKENDS, Harness, wait_for
from notifyhelp import Hook, hook  # noqa: F401 (the fixture)

from jobd.config import ConfigError, parse_config
from jobd.models import RunStatus

EXIT = {"shell": 'exit "${JOBD_PARAM_CODE:-0}"'}
RAISES = {"handler": "late_jobs:raises"}


def shell_exit(code: int) -> dict[str, Any]:
    return {"shell": f"exit {code}"}


async def attempts(h: Harness, job: str) -> list[dict[str, Any]]:
    return list(reversed((await h.get_json(f"/api/v1/runs?job={job}&limit=50"))["runs"]))


async def settled_runs(h: Harness, job: str, count: int) -> list[dict[str, Any]]:
    """Wait until the job has `count` runs, all ended."""

    async def done() -> list[dict[str, Any]] | None:
        runs = await attempts(h, job)
        ended = all(r["status"] not in ("PENDING", "PROCESSING") for r in runs)
        return runs if len(runs) >= count and ended else None

    result: list[dict[str, Any]] = await wait_for(done, timeout=20)
    return result


def fast(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "retries": 2, "retry_backoff_s": 0.01}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_exit_code_filters_decide_the_retries(start_daemon: Any) -> None:
    h = await start_daemon(
        {
            "only75_gets_75": fast({**shell_exit(75), "retry_on_exit_codes": [75]}),
            "only75_gets_1": fast({**shell_exit(1), "retry_on_exit_codes": [75]}),
            "never2_gets_2": fast({**shell_exit(2), "no_retry_on_exit_codes": [2]}),
            "never2_gets_3": fast({**shell_exit(3), "no_retry_on_exit_codes": [2]}),
        }
    )
    for name in ("only75_gets_75", "only75_gets_1", "never2_gets_2", "never2_gets_3"):
        await h.trigger(name)
    assert len(await settled_runs(h, "only75_gets_75", 3)) == 3
    assert len(await settled_runs(h, "never2_gets_3", 3)) == 3
    [one] = await settled_runs(h, "only75_gets_1", 1)
    assert one["status"] == "FAILED" and one["error"].endswith(
        "not retried (exit code 1 is not in retry_on_exit_codes)"
    )
    [two] = await settled_runs(h, "never2_gets_2", 1)
    assert two["error"].endswith("not retried (exit code 2 is in no_retry_on_exit_codes)")
    assert len(await attempts(h, "only75_gets_1")) == 1 and len(await attempts(h, "never2_gets_2")) == 1


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_retry_on_exceptions_retries_only_those_classes(start_daemon: Any) -> None:
    h = await start_daemon({"py": fast({**RAISES, "retry_on_exceptions": ["late_jobs:Transient"]})})
    first = await h.trigger("py", {"kind": "flaky"})  # a subclass of Transient: retried
    runs = await settled_runs(h, "py", 3)
    assert [r["attempt"] for r in runs] == [1, 2, 3] and runs[0]["id"] == first["id"]
    fatal = await h.trigger("py", {"kind": "fatal"})
    done = await h.finished(fatal["id"])
    assert done.status is RunStatus.FAILED
    assert done.error == "Fatal: as asked; not retried (Fatal is not in retry_on_exceptions)"
    await settled_runs(h, "py", 4)
    assert len(await attempts(h, "py")) == 4


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_job_pauses_itself_after_failures_and_resume_clears_it(start_daemon: Any, hook: Hook) -> None:
    h = await start_daemon(
        {"breaks": {**RAISES, "pause_after_failures": 2, "notify": {"on_failure": ["chat"]}}},
        notifiers={"chat": {"kind": "webhook", "url": hook.url, "retry_backoff_s": 0.05}},
    )
    first = await h.trigger("breaks")
    await h.finished(first["id"])
    job = (await h.get_json("/api/v1/jobs/breaks"))["job"]
    assert (job["paused"], job["pause_reason"]) == (False, None)
    second = await h.trigger("breaks")
    await h.finished(second["id"])

    async def paused() -> dict[str, Any] | None:
        found = (await h.get_json("/api/v1/jobs/breaks"))["job"]
        return found if found["paused"] else None

    job = await wait_for(paused)
    assert job["pause_reason"] == "2 consecutive failures (pause_after_failures 2)"

    async def paused_notice() -> list[dict[str, Any]] | None:
        body = await h.get_json("/api/v1/notifications?job=breaks")
        found = [n for n in body["notifications"] if n["payload"].get("reason") == "paused"]
        return found or None

    [notice] = await wait_for(paused_notice)
    assert notice["event"] == "failure" and notice["run_id"] == second["id"]
    assert notice["payload"]["pause_reason"] == job["pause_reason"]
    response = await h.client.post("/api/v1/jobs/breaks/resume")
    assert response.status == 200, await response.text()
    job = (await h.get_json("/api/v1/jobs/breaks"))["job"]
    assert (job["paused"], job["pause_reason"]) == (False, None)
    # resumed while failing: another run of failures pauses it again, not the next failure
    third = await h.trigger("breaks")
    await h.finished(third["id"])
    assert (await h.get_json("/api/v1/jobs/breaks"))["job"]["paused"] is False


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({**EXIT, "retry_on_exit_codes": [1], "no_retry_on_exit_codes": [2]}, "jobs.j.no_retry_on_exit_codes: give"),
        ({**EXIT, "retry_on_exit_codes": [256]}, "jobs.j.retry_on_exit_codes[0]: 256 is not an exit code"),
        ({**EXIT, "retry_on_exit_codes": ["1"]}, "jobs.j.retry_on_exit_codes[0]: must be an exit code"),
        ({**EXIT, "retry_on_exceptions": ["late_jobs:Fatal"]}, "jobs.j.retry_on_exceptions: only a job with a Python"),
        ({**RAISES, "retry_on_exceptions": ["late_jobs:nope"]}, "jobs.j.retry_on_exceptions[0]: 'late_jobs' has no"),
        ({**RAISES, "retry_on_exceptions": ["no_such_module:E"]}, "jobs.j.retry_on_exceptions[0]: cannot import"),
        (
            {**RAISES, "retry_on_exceptions": ["late_jobs:NOT_AN_EXCEPTION"]},
            "jobs.j.retry_on_exceptions[0]: 'late_jobs:NOT_AN_EXCEPTION' is not",
        ),
        (
            {**RAISES, "retry_on_exceptions": ["late_jobs.Fatal"]},
            "jobs.j.retry_on_exceptions[0]: 'late_jobs.Fatal' must",
        ),
        ({**EXIT, "late_after_s": 60}, "jobs.j.late_after_s: only a job with a schedule"),
        ({**EXIT, "max_duration_s": 0}, "jobs.j.max_duration_s: 0 is below the minimum"),
        ({**EXIT, "max_duration_p95_factor": 0.5}, "jobs.j.max_duration_p95_factor: 0.5 is below"),
        ({**EXIT, "min_duration_s": "5"}, "jobs.j.min_duration_s: must be a number"),
        ({**EXIT, "pause_after_failures": 0}, "jobs.j.pause_after_failures: 0 is out of range"),
        ({**EXIT, "pause_after_failures": True}, "jobs.j.pause_after_failures: must be an integer"),
    ],
)
def test_the_config_refuses_bad_rules_naming_the_key(job: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": {"j": job}}, environ={})
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_config_reads_the_rules() -> None:
    config = parse_config(
        {
            "jobs": {
                "j": {
                    **RAISES,
                    "schedule": "* * * * *",
                    "late_after_s": 90,
                    "max_duration_s": 3600,
                    "max_duration_p95_factor": 2,
                    "min_duration_s": 1.5,
                    "pause_after_failures": 5,
                    "no_retry_on_exit_codes": [2, 64],
                    "retry_on_exceptions": ["late_jobs:Transient", "builtins:TimeoutError"],
                },
                "plain": EXIT,
            }
        },
        environ={},
    )
    rules = config.jobs["j"].rules
    assert (rules.late_after_s, rules.max_duration_s, rules.max_duration_p95_factor) == (90, 3600, 2)
    assert (rules.min_duration_s, rules.pause_after_failures, rules.no_retry_on_exit_codes) == (1.5, 5, (2, 64))
    assert rules.retry_on_exceptions is not None and TimeoutError in rules.retry_on_exceptions
    assert config.jobs["plain"].rules.retry_on_exit_codes is None and not config.jobs["plain"].rules.watches_long


def test_jobd_check_names_the_key_in_one_line(tmp_path: Any) -> None:
    import subprocess
    import sys

    config = tmp_path / "jobd.toml"
    config.write_text('[jobs.a]\nshell = "exit 1"\nretry_on_exit_codes = [1]\nno_retry_on_exit_codes = [2]\n')
    done = subprocess.run(
        [sys.executable, "-m", "jobd", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobd: invalid config: jobs.a.no_retry_on_exit_codes: give retry_on_exit_codes or no_retry_on_exit_codes, not both"
    ]
