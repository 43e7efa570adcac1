"""[groups.NAME] tables and the jobs' `groups` and `priority` keys.

A group is a pool of slots shared by the jobs that name it: a run starts only when each of its
job's groups has a free slot (see jobd/lifecycle/groups.py and docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from jobd.config.errors import ConfigError
from jobd.config.sections import JOB_NAME, GroupConfig, JobConfig
from jobd.config.table import Table

# Bounds of a run's priority: wide enough for any scheme of levels, small enough that the
# effective priority (priority plus waiting time) stays exact in a 64-bit integer of milliseconds.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


def parse_groups(t: Table) -> dict[str, GroupConfig]:
    groups: dict[str, GroupConfig] = {}
    for name in list(t.raw):
        item = t.table(name)
        if not JOB_NAME.match(name):
            raise ConfigError(
                f"{item.path}: group names use letters, digits, '_', '-', '.' "
                "(at most 128, not starting with punctuation)"
            )
        groups[name] = GroupConfig(
            name=name,
            max_concurrency=item.integer("max_concurrency", 1, minimum=1),
            description=item.string("description", ""),
        )
        if not item.has("max_concurrency"):
            raise ConfigError(f"{item.key('max_concurrency')}: required")
        item.done()
    t.done()
    return groups


def job_groups(t: Table) -> tuple[str, ...]:
    """A job's `groups`, each named once."""
    names = t.strings("groups")
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{t.key('groups')}: {name!r} is named twice")
    return names


def check_members(jobs: Mapping[str, JobConfig], groups: Mapping[str, GroupConfig]) -> None:
    """Every group a job names is defined."""
    for job in jobs.values():
        for name in job.groups:
            if name not in groups:
                known = ", ".join(sorted(groups)) or "none is defined"
                raise ConfigError(f"jobs.{job.name}.groups: unknown group {name!r} (groups: {known})")
