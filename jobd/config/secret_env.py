"""A job's `secret_env`: environment variables whose values are read when a run starts, from a
file (a systemd credential) or from one of jobd's own environment variables, and never stored.

    secret_env = { PGPASSWORD = { file = "/run/credentials/jobd.service/pg" },
                   TOKEN = { env_var = "JOBD_TOKEN" } }

`[defaults] secret_env` gives variables to every job; a job's own entry for the same variable
replaces the default's. The values themselves are read by jobd.runner.credentials.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from jobd.config.errors import ConfigError
from jobd.config.table import Table

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Shorter values are refused at run start: hiding every "ab" in a run's output would garble it,
# and not hiding it would let the value through.
MIN_SECRET_CHARS = 4


@dataclasses.dataclass(frozen=True, slots=True)
class SecretSource:
    """Where the value of one secret variable comes from: exactly one of `file`, `env_var`."""

    name: str
    file: str | None = None  # an absolute path
    env_var: str | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env_var}"


def parse_secret_env(
    t: Table, base_dir: Path, defaults: tuple[SecretSource, ...] = (), *, env: Mapping[str, str] | None = None
) -> tuple[SecretSource, ...]:
    """The `secret_env` table of `t` (a job's, or [defaults]') over `defaults`, by variable name."""
    if t.get("secret_env", (dict,), None, 'a table like { PGPASSWORD = { file = "..." } }') is None:
        return _without_env(t, defaults, env)
    table = t.table("secret_env")
    sources = {source.name: source for source in defaults}
    for name in table.raw:
        key = table.key(name)
        if not ENV_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a valid name for an environment variable")
        if name.startswith("JOBD_"):
            raise ConfigError(f"{key}: JOBD_* variables are jobd's own (JOBD_RUN_ID, JOBD_PARAMS, ...)")
        sources[name] = _source(name, table.table(name), base_dir)
    table.done()
    merged = tuple(sources.values())
    return _without_env(t, merged, env)


def _without_env(
    t: Table, sources: tuple[SecretSource, ...], env: Mapping[str, str] | None
) -> tuple[SecretSource, ...]:
    # Both would set the variable; which one wins would be a surprise either way.
    for source in sources:
        if env and source.name in env:
            raise ConfigError(f"{t.key('env')}.{source.name}: also a secret_env variable; give it in one of them")
    return sources


def _source(name: str, t: Table, base_dir: Path) -> SecretSource:
    file = t.string("file")
    env_var = t.string("env_var")
    t.done()
    if (file is None) == (env_var is None):
        raise ConfigError(f"{t.path}: give exactly one of file, env_var")
    if file is not None:
        if not file:
            raise ConfigError(f"{t.key('file')}: must not be empty")
        path = Path(file)
        return SecretSource(name, file=str(path if path.is_absolute() else (base_dir / path).resolve()))
    assert env_var is not None
    if not ENV_NAME.match(env_var):
        raise ConfigError(f"{t.key('env_var')}: {env_var!r} is not a valid name for an environment variable")
    return SecretSource(name, env_var=env_var)


def secret_env_warnings(
    jobs: Mapping[str, tuple[SecretSource, ...]], defaults: tuple[SecretSource, ...], environ: Mapping[str, str]
) -> list[str]:
    """What would fail a run if it started now (`jobd check` and `jobd serve` print it), once per
    source. A warning, not an error: systemd's credentials exist only inside the service."""
    warnings: list[str] = []
    seen = set(defaults)
    places = [("defaults", source) for source in defaults]
    for job, sources in jobs.items():
        places.extend((f"jobs.{job}", source) for source in sources if source not in seen)
    for place, source in places:
        key = f"{place}.secret_env.{source.name}"
        if source.file is not None and not os.access(source.file, os.R_OK):
            warnings.append(f"{key}.file: {source.file} is not readable now; its runs fail until it is")
        elif source.env_var is not None and source.env_var not in environ:
            warnings.append(f"{key}.env_var: {source.env_var} is not set now; its runs fail until it is")
    return warnings
