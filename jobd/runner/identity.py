"""Who a command runs as: its user, groups and umask, applied by subprocess in the child between
fork and exec (setgroups, setgid, setuid; no Python code runs there for this)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from jobd.config.errors import ConfigError
from jobd.config.limits import RunAs, lookup_group, lookup_user

CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7


class IdentityError(Exception):
    """The run cannot be started as the user or group its job names; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    uid: int | None  # None: keep jobd's
    gid: int | None
    groups: tuple[int, ...] | None  # supplementary groups; None: keep jobd's
    umask: int | None
    env: Mapping[str, str]  # HOME, USER, LOGNAME of the user

    def popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.uid is not None:
            kwargs["user"] = self.uid
        if self.gid is not None:
            kwargs["group"] = self.gid
        if self.groups is not None:
            kwargs["extra_groups"] = list(self.groups)
        if self.umask is not None:
            kwargs["umask"] = self.umask
        return kwargs


def capabilities(kind: str = "CapEff", status_path: str = "/proc/self/status") -> int | None:
    """A capability bit mask of this process (CapEff, CapAmb, ...); None where /proc does not say."""
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{kind}:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


# Stopping a run of another user (timeout, cancel) signals its processes: that takes CAP_KILL.
_FOR_USER = (1 << CAP_SETUID) | (1 << CAP_SETGID) | (1 << CAP_KILL)
_FOR_GROUP = 1 << CAP_SETGID
USER_CAPS = "CAP_SETUID, CAP_SETGID or CAP_KILL"


def can_switch(*, user: bool) -> bool:
    """Whether jobd may run commands as another user, or (user=False) only with another group."""
    caps = capabilities()
    if caps is None:
        return os.geteuid() == 0
    needed = _FOR_USER if user else _FOR_GROUP
    return caps & needed == needed


def privilege_problem(run_as: RunAs, key_prefix: str) -> str | None:
    """One line naming the key when jobd cannot become the job's user or group; None when it can."""
    if run_as.user is not None and not can_switch(user=True):
        return (
            f"{key_prefix}.user: jobd lacks {USER_CAPS} (run it as root), "
            f"so runs of this job will fail instead of running as {run_as.user!r}"
        )
    if run_as.group is not None and run_as.user is None and not can_switch(user=False):
        return (
            f"{key_prefix}.group: jobd lacks CAP_SETGID (run it as root), "
            f"so runs of this job will fail instead of running as group {run_as.group!r}"
        )
    if run_as.user is not None and os.geteuid() != 0 and (capabilities("CapAmb") or 0) & _FOR_USER:
        # A switch between two non-root users keeps the capabilities, and exec adds ambient ones back.
        return (
            f"{key_prefix}.user: jobd has {USER_CAPS.replace(' or ', ' and ')} as ambient capabilities, which "
            f"every command it starts inherits, also as {run_as.user!r}: its runs will fail; run jobd as root"
        )
    return None


def resolve(run_as: RunAs, job_name: str) -> Identity:
    """The ids to switch to, looked up now (users may change while jobd runs)."""
    prefix = f"jobs.{job_name}"
    if not can_switch(user=run_as.user is not None) and (run_as.user is not None or run_as.group is not None):
        who = run_as.user if run_as.user is not None else f"group {run_as.group}"
        needs = USER_CAPS if run_as.user is not None else "CAP_SETGID"
        raise IdentityError(f"cannot run as {who}: jobd lacks {needs} (run it as root)")
    if run_as.user is not None and os.geteuid() != 0 and (capabilities("CapAmb") or 0) & _FOR_USER:
        raise IdentityError(
            f"cannot run as {run_as.user}: jobd's capabilities are ambient, the command would inherit them "
            "(run jobd as root)"
        )
    try:
        entry = None if run_as.user is None else lookup_user(run_as.user, f"{prefix}.user")
        group_entry = None if run_as.group is None else lookup_group(run_as.group, f"{prefix}.group")
    except ConfigError as exc:  # the user was deleted since the config was loaded
        raise IdentityError(f"cannot run as {run_as.user or run_as.group}: {exc}") from None
    uid = gid = None
    groups: tuple[int, ...] | None = None
    env: dict[str, str] = {}
    if run_as.user is not None:
        uid = entry.pw_uid if entry is not None else int(run_as.user)
        gid = entry.pw_gid if entry is not None else uid
        name = entry.pw_name if entry is not None else run_as.user
        env = {"HOME": entry.pw_dir if entry is not None else "/", "USER": name, "LOGNAME": name}
    if run_as.group is not None:
        gid = group_entry.gr_gid if group_entry is not None else int(run_as.group)
    if uid is not None and gid is not None:
        # initgroups(3): the user's supplementary groups from the group database, with the primary one.
        groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry is not None else (gid,)
    return Identity(uid=uid, gid=gid, groups=groups, umask=run_as.umask, env=env)
