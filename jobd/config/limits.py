"""A job's `user`, `group`, `umask` and its resource limits (`memory_max`, `cpu_quota`,
`tasks_max`, `io_weight`): read, checked, and refused for Python handlers."""

from __future__ import annotations

import dataclasses
import grp
import pwd
import re

from jobd.config.errors import ConfigError
from jobd.config.table import Table

IDENTITY_KEYS = ("user", "group", "umask")
LIMIT_KEYS = ("memory_max", "cpu_quota", "tasks_max", "io_weight")
_SIZE = re.compile(r"^([0-9]+)([KMGT]?)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")
_UMASK = re.compile(r"^0?[0-7]{3}$")
MAX_TASKS = 4_194_304  # the kernel's pid_max limit
MAX_CPU_PERCENT = 100_000  # a thousand CPUs


@dataclasses.dataclass(frozen=True, slots=True)
class RunAs:
    """Who a command runs as: names or numeric ids as written in the config (resolved at each run)."""

    user: str | None = None
    group: str | None = None
    umask: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    memory_max: int | None = None  # bytes
    memory_max_text: str | None = None  # as written, for messages: "512M"
    cpu_quota: float | None = None  # percent of one CPU: 50.0, 200.0
    tasks_max: int | None = None
    io_weight: int | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "memory_max": self.memory_max_text,
            "cpu_quota": None if self.cpu_quota is None else f"{self.cpu_quota:g}%",
            "tasks_max": self.tasks_max,
            "io_weight": self.io_weight,
        }


def parse_run_as(t: Table, *, python: bool) -> RunAs | None:
    """`user`, `group` and `umask` of a job; None when it sets none of them."""
    _refuse_for_handler(t, IDENTITY_KEYS, python)
    user = _id_text(t, "user")
    group = _id_text(t, "group")
    if user is not None:
        lookup_user(user, t.key("user"))
    if group is not None:
        lookup_group(group, t.key("group"))
    umask = None
    text = t.string("umask")
    if text is not None:
        if not _UMASK.match(text):
            raise ConfigError(f'{t.key("umask")}: {text!r} is not an octal umask like "027"')
        umask = int(text, 8)
    if user is None and group is None and umask is None:
        return None
    return RunAs(user=user, group=group, umask=umask)


def parse_limits(t: Table, *, python: bool) -> Limits | None:
    """The job's resource limits; None when it sets none of them."""
    _refuse_for_handler(t, LIMIT_KEYS, python)
    memory_text = t.string("memory_max")
    memory = None if memory_text is None else parse_size(memory_text, t.key("memory_max"))
    quota_text = t.string("cpu_quota")
    quota = None if quota_text is None else parse_percent(quota_text, t.key("cpu_quota"))
    tasks = _optional_integer(t, "tasks_max", MAX_TASKS)
    weight = _optional_integer(t, "io_weight", 10_000)
    if memory is None and quota is None and tasks is None and weight is None:
        return None
    return Limits(memory_max=memory, memory_max_text=memory_text, cpu_quota=quota, tasks_max=tasks, io_weight=weight)


def parse_size(text: str, key: str) -> int:
    match = _SIZE.match(text.strip().upper())
    if match is None:
        raise ConfigError(f'{key}: {text!r} is not a size like "512M" (a number with K, M, G or T)')
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size < 1024 * 1024:
        raise ConfigError(f"{key}: {text!r} is below the minimum 1M")
    return size


def parse_percent(text: str, key: str) -> float:
    match = _PERCENT.match(text.strip())
    if match is None:
        raise ConfigError(f'{key}: {text!r} is not a percentage like "50%" (100% is one CPU)')
    value = float(match.group(1))
    if not 1 <= value <= MAX_CPU_PERCENT:
        raise ConfigError(f"{key}: {text!r} is out of range (from 1% to {MAX_CPU_PERCENT}%)")
    return value


def lookup_user(user: str, key: str) -> pwd.struct_passwd | None:
    """The passwd entry of a name or numeric id; None for a number without one (allowed)."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return None
        raise ConfigError(f"{key}: no such user {user!r}") from None


def lookup_group(group: str, key: str) -> grp.struct_group | None:
    try:
        return grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        if group.isdigit():
            return None
        raise ConfigError(f"{key}: no such group {group!r}") from None


def _id_text(t: Table, name: str) -> str | None:
    value: str | int | None = t.get(name, (str, int), None, "a name or a numeric id")
    if value is None:
        return None
    if isinstance(value, int):
        if not 0 <= value < 2**32 - 1:
            raise ConfigError(f"{t.key(name)}: {value} is not a valid id")
        return str(value)
    if not value or "\0" in value or ":" in value:
        raise ConfigError(f"{t.key(name)}: {value!r} is not a valid name")
    return value


def _optional_integer(t: Table, name: str, maximum: int) -> int | None:
    if t.get(name, (int,), None, "an integer") is None:
        return None
    return t.integer(name, 0, minimum=1, maximum=maximum)


def _refuse_for_handler(t: Table, keys: tuple[str, ...], python: bool) -> None:
    key = next((key for key in keys if t.has(key)), None)
    if python and key is not None:
        raise ConfigError(
            f"{t.key(key)}: applies only to commands (command or shell); "
            "a Python handler runs inside jobd, as its user and in its cgroup"
        )
