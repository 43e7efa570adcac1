"""The environment a command runs with."""

from __future__ import annotations

import json
from collections.abc import Mapping

from jobd.config import JobConfig
from jobd.models import Run
from jobd.systemd import clean_child_environ


def command_env(job: JobConfig, run: Run, environ: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment minus service-manager variables, plus the job's and JOBD_*."""
    env = clean_child_environ(environ)
    env.update(job.env)
    env.update(
        JOBD_RUN_ID=str(run.id),
        JOBD_JOB=job.name,
        JOBD_ATTEMPT=str(run.attempt),
        JOBD_PARAMS=json.dumps(run.params, separators=(",", ":")),
    )
    return env
