"""What a command runs under besides its argv: its user (`identity`) and its cgroup (`limits`).

A run whose job names a user jobd cannot become fails before anything starts. A run whose limits
this machine cannot enforce still runs, with a line in its log saying they are not enforced
(and `jobd check` and the start-up log say so for the job): a limit is a guard, and refusing
every run of a job on a host without cgroup v2 would turn a missing guard into an outage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jobd.config import Config, JobConfig
from jobd.config.limits import Limits
from jobd.runner.identity import Identity, IdentityError, privilege_problem, resolve
from jobd.runner.limits import LimitsError, RunCgroup, create, prepare, probe


class ConfineError(Exception):
    """The run cannot start as its job says; the message is its error."""


@dataclasses.dataclass(slots=True)
class Confinement:
    identity: Identity | None = None
    cgroup: RunCgroup | None = None
    limits: Limits | None = None
    warning: str | None = None  # the limits are not enforced, and why
    oom_kills: int = 0  # read from the run's cgroup before it is removed

    def popen_kwargs(self) -> dict[str, Any]:
        kwargs = {} if self.identity is None else self.identity.popen_kwargs()
        if self.cgroup is not None:
            # Run in the child before exec; a single write, safe there even with jobd's threads.
            kwargs["preexec_fn"] = self.cgroup.enter
        return kwargs

    def environment(self, env: dict[str, str], job_env: Mapping[str, str]) -> dict[str, str]:
        """HOME, USER and LOGNAME of the job's user, unless the job's own `env` sets them."""
        if self.identity is not None:
            env.update({k: v for k, v in self.identity.env.items() if k not in job_env})
        return env

    def error(self, error: str | None, timed_out: bool) -> str | None:
        """The run's error, naming the memory limit when the OOM killer struck."""
        if error is None or timed_out or self.cgroup is None or self.limits is None:
            return error
        if self.limits.memory_max is not None and self.oom_kills > 0:
            return f"out of memory (memory_max {self.limits.memory_max_text})"
        return error

    def spawned(self) -> None:
        if self.cgroup is not None:
            self.cgroup.close_fd()

    async def release(self) -> str | None:
        """Remove the run's cgroup (killing what is left in it); a problem to log, or None."""
        if self.cgroup is None:
            return None
        self.oom_kills = self.cgroup.oom_kills()
        return await self.cgroup.remove()


def confine(job: JobConfig, run_id: int) -> Confinement:
    """Resolve the job's user and make the run's cgroup; raises ConfineError when it cannot start."""
    confinement = Confinement(limits=job.limits)
    try:
        if job.run_as is not None:
            confinement.identity = resolve(job.run_as, job.name)
        if job.limits is not None:
            support = probe()
            missing = support.missing(job.limits)
            if missing is not None:
                confinement.warning = f"resource limits NOT enforced: {missing}"
            else:
                confinement.cgroup = create(support, job.limits, run_id)
    except (IdentityError, LimitsError) as exc:
        raise ConfineError(str(exc)) from None
    return confinement


def host_problems(config: Config, *, prepare_cgroups: bool = False) -> list[str]:
    """One line per job key this host cannot honour, for `jobd check` and the start-up log; with
    `prepare_cgroups` (at start-up), jobd's cgroup is also made ready for the limited runs."""
    problems: list[str] = []
    support = None
    for name, job in config.jobs.items():
        if job.run_as is not None:
            problem = privilege_problem(job.run_as, f"jobs.{name}")
            if problem is not None:
                problems.append(problem)
        if job.limits is not None:
            support = support or probe()
            missing = support.missing(job.limits)
            if missing is not None:
                keys = [key for key, value in job.limits.as_json().items() if value is not None]
                problems.append(f"jobs.{name}.{keys[0]}: limits NOT enforced ({', '.join(keys)}): {missing}")
    if support is None or support.base is None:
        return problems
    limited = [job.limits for job in config.jobs.values() if job.limits is not None]
    limited = [limits for limits in limited if support.missing(limits) is None]
    if prepare_cgroups and limited:
        problem = prepare(support, limited)
        if problem is not None:
            name = next(name for name, job in config.jobs.items() if job.limits in limited)
            problems.append(f"jobs.{name}: its limited runs will fail: {problem}")
    return problems


def confinement_json(job: JobConfig) -> dict[str, Any]:
    """A job's user, group, umask and limits as the API shows them, and whether the limits hold here."""
    run_as = job.run_as
    limits = job.limits
    return {
        "run_as": None
        if run_as is None
        else {
            "user": run_as.user,
            "group": run_as.group,
            "umask": None if run_as.umask is None else f"{run_as.umask:03o}",
        },
        "limits": None if limits is None else limits.as_json(),
        "limits_enforced": None if limits is None else probe().missing(limits) is None,
    }
