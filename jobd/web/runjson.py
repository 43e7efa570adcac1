"""A run's JSON as the API answers with it: the values of its job's secret params hidden.

Every route that shows a run goes through `run_json`, so that a secret parameter is shown as
"***" in every answer (the run, lists, the trigger's 202, the job's last run). Secrecy is read
from the job's definitions as they are now: the stored params keep the real value, which the
handler needs (and a retry repeats).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobd.config import JobConfig
from jobd.config.paramcheck import validate
from jobd.errors import BadRequest
from jobd.models import Run
from jobd.runner.credentials import values_to_hide
from jobd.runner.secrets import hidden_texts, redact_value


def run_json(jobs: Mapping[str, JobConfig], run: Run, *, with_log: bool = False) -> dict[str, Any]:
    data = run.to_json(with_log=with_log)
    job = jobs.get(run.job)
    if job is not None and job.params.secret_names:
        data["params"] = job.params.redact(run.params)
    return data


def checked_params(
    job: JobConfig, params: dict[str, Any], where: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A trigger's params with the job's defaults filled in, or a 400 naming each bad parameter
    (`where` is the params' place in the body: "params", "runs[3].params"); the text of the job's
    secret_env values (read from `environ`, jobd's own) hidden in them before they are stored."""
    if job.secret_env:
        params = redact_value(params, hidden_texts(values_to_hide(job.secret_env, environ or {})))
    schema = job.params.json_schema()
    if schema is None:
        return params
    checked, problems = validate(schema, job.params.with_defaults(params))
    if problems:
        first = problems[0]
        raise BadRequest(
            f"{where}.{first.param}: {first.message}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            param=first.param,
            errors=[{"param": p.param, "message": p.message, "where": f"{where}.{p.param}"} for p in problems],
        )
    return checked
