"""A token's `jobs`: the glob patterns (fnmatch) of the jobs it may see and act on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from jobd.config.errors import ConfigError
from jobd.config.sections import AuthConfig
from jobd.config.table import Table

# What a job name is made of (see JOB_NAME), plus the glob characters `*`, `?`, `[...]`, `[!...]`.
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


def _bracket_error(pattern: str) -> str | None:
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                return "'[' inside a [...] set"
            depth = 1
        elif char == "]" and depth:
            depth = 0
    return "a '[' without its ']'" if depth else None


def token_jobs(item: Table) -> tuple[str, ...]:
    """The `jobs` key of one token; () when absent (every job)."""
    present = item.has("jobs")
    patterns = item.strings("jobs")
    if not present:
        return ()
    key = item.key("jobs")
    if not patterns:
        raise ConfigError(f"{key}: an empty list lets the token see no job; leave jobs out for every job")
    for index, pattern in enumerate(patterns):
        if not _PATTERN.match(pattern):
            raise ConfigError(
                f"{key}[{index}]: {pattern!r} is not a job name pattern "
                "(letters, digits, '_', '-', '.', and the globs *, ?, [...], at most 128)"
            )
        problem = _bracket_error(pattern)
        if problem is not None:
            raise ConfigError(f"{key}[{index}]: {pattern!r} has {problem}")
    return patterns


def matches(patterns: Iterable[str], job: str) -> bool:
    """Case-sensitive, as job names are."""
    return any(fnmatchcase(job, pattern) for pattern in patterns)


def unmatched_token_jobs(auth: AuthConfig, jobs: Mapping[str, object]) -> list[str]:
    """A warning line for each pattern that matches no configured job (a typo, most likely)."""
    lines = []
    for index, token in enumerate(auth.tokens):
        for at, pattern in enumerate(token.jobs):
            if not any(fnmatchcase(name, pattern) for name in jobs):
                lines.append(f"auth.tokens[{index}].jobs[{at}]: {pattern!r} matches no configured job")
    return lines
