"""Resource limits with cgroup v2: each limited run in a cgroup of its own under jobd's delegated
cgroup, its limits written before the command starts, its OOM kills read when it ends.

The tree, under the cgroup jobd was started in (its systemd service with `Delegate=yes`, or a
container's own cgroup):

    <jobd's cgroup>/                 controllers enabled in cgroup.subtree_control
        jobd-daemon/                 jobd itself, moved here (cgroup v2 allows no processes in a
                                     cgroup that hands controllers to its children)
        jobd-run-<run id>/           one limited run: memory.max, cpu.max, pids.max, io.weight

The child enters its cgroup between fork and exec: jobd opens the run's cgroup.procs before the
spawn and the child writes "0" (itself) to that descriptor, so nothing of the command ever runs
outside its limits. The write happens after the switch to the job's user; the kernel checks the
opener's credentials (Linux 5.16 and the stable kernels the fix went to), which are jobd's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import time
from pathlib import Path

from jobd.config.limits import Limits

DAEMON_LEAF = "jobd-daemon"
RUN_PREFIX = "jobd-run-"
EMPTY_WAIT_S = 5.0  # how long a run's killed processes may take to leave its cgroup
_CONTROLLER = {"memory_max": "memory", "cpu_quota": "cpu", "tasks_max": "pids", "io_weight": "io"}
_CPU_PERIOD_US = 100_000


class LimitsError(Exception):
    """The run's cgroup could not be made; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupSupport:
    """Where limited runs' cgroups go, or why there is no such place."""

    base: Path | None
    controllers: frozenset[str] = frozenset()
    reason: str | None = None

    def missing(self, limits: Limits) -> str | None:
        """Why `limits` cannot be enforced here (one phrase), or None when they can."""
        if self.base is None:
            return self.reason
        wanted = sorted({_CONTROLLER[key] for key in _CONTROLLER if getattr(limits, key) is not None})
        absent = [name for name in wanted if name not in self.controllers]
        if absent:
            return f"the cgroup v2 controller(s) {', '.join(absent)} are not available in {self.base}"
        return None


def probe(proc_self: Path = Path("/proc/self")) -> CgroupSupport:
    """Whether this process can give its runs cgroups of their own (cgroup v2, delegated to it)."""
    mount = _cgroup2_mount(proc_self / "mountinfo")
    if mount is None:
        return CgroupSupport(None, reason="no cgroup v2 hierarchy is mounted (cgroup v1 only)")
    own = _own_cgroup(proc_self / "cgroup")
    if own is None:
        return CgroupSupport(None, reason="this process is in no cgroup v2 cgroup")
    base = mount / own.lstrip("/") if own != "/" else mount
    if base.name == DAEMON_LEAF:  # moved there by an earlier run
        base = base.parent
    try:
        controllers = frozenset((base / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return CgroupSupport(None, reason=f"cannot read {base}/cgroup.controllers: {exc.strerror}")
    writable = all(os.access(base / name, os.W_OK) for name in ("cgroup.subtree_control", "cgroup.procs"))
    if not writable or not os.access(base, os.W_OK):
        return CgroupSupport(
            None,
            reason=f"jobd's cgroup {base} is not delegated to it (not writable; under systemd: Delegate=yes)",
        )
    if not controllers:
        return CgroupSupport(None, reason=f"no cgroup v2 controller is available in {base} (cgroup v1 holds them)")
    others = _other_processes(base) if base != mount else []
    if others:
        return CgroupSupport(
            None,
            reason=f"jobd's cgroup {base} also holds other processes (pid {others[0]}): it is not delegated to "
            "jobd alone (under systemd: Delegate=yes)",
        )
    return CgroupSupport(base, controllers)


def prepare(support: CgroupSupport, limits: list[Limits]) -> str | None:
    """Move jobd into its leaf and enable the controllers `limits` need, before any run starts (so
    that no run of jobd's sits in the cgroup that must hand controllers down); a problem or None."""
    if support.base is None:
        return support.reason
    wanted = sorted({_CONTROLLER[key] for lim in limits for key in _CONTROLLER if getattr(lim, key) is not None})
    try:
        _enable(support.base, wanted)
    except OSError as exc:
        return f"cannot enable the cgroup v2 controllers {', '.join(wanted)} in {support.base}: {exc.strerror}"
    for stale in support.base.glob(f"{RUN_PREFIX}*"):  # left by a daemon killed with its runs
        try:
            stale.rmdir()
        except OSError:
            pass  # still holds processes: a leftover run, killed at start (see leftovers)
    return None


@dataclasses.dataclass(slots=True)
class RunCgroup:
    path: Path
    procs_fd: int

    def enter(self) -> None:
        """Run in the child between fork and exec: one write of "0" (the writer) to cgroup.procs."""
        os.write(self.procs_fd, b"0")

    def close_fd(self) -> None:
        if self.procs_fd >= 0:
            os.close(self.procs_fd)
            self.procs_fd = -1

    def oom_kills(self) -> int:
        try:
            text = (self.path / "memory.events").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    async def remove(self) -> str | None:
        """Kill whatever is left in the cgroup and remove it; a problem (one line) or None."""
        self.close_fd()
        kill = self.path / "cgroup.kill"
        try:
            if kill.exists():
                kill.write_text("1")
            deadline = time.monotonic() + EMPTY_WAIT_S
            while _populated(self.path) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # killed processes leave once their parent reaps them
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return f"cannot remove cgroup {self.path}: {exc.strerror}"
        return None


def create(support: CgroupSupport, limits: Limits, run_id: int) -> RunCgroup:
    """The run's cgroup with its limits written, and its cgroup.procs open for the child."""
    base = support.base
    if base is None:
        raise LimitsError(support.reason or "no cgroup")
    wanted = sorted({_CONTROLLER[key] for key in _CONTROLLER if getattr(limits, key) is not None})
    try:
        _enable(base, wanted)
        path = base / f"{RUN_PREFIX}{run_id}"
        try:
            path.mkdir()
        except FileExistsError:  # left by a crash: its processes died with their daemon's kill
            path.rmdir()
            path.mkdir()
        try:
            for name, value in _settings(limits).items():
                if name != "memory.swap.max" or (path / name).exists():  # no such file without swap accounting
                    (path / name).write_text(value)
            fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            path.rmdir()
            raise
    except OSError as exc:
        raise LimitsError(f"cannot set up the run's cgroup under {base}: {exc.strerror or exc}") from None
    return RunCgroup(path, fd)


def _settings(limits: Limits) -> dict[str, str]:
    settings: dict[str, str] = {}
    if limits.memory_max is not None:
        settings["memory.max"] = str(limits.memory_max)
        settings["memory.swap.max"] = "0"  # over its limit a run is killed, not pushed into swap
    if limits.cpu_quota is not None:
        settings["cpu.max"] = f"{round(limits.cpu_quota * _CPU_PERIOD_US / 100)} {_CPU_PERIOD_US}"
    if limits.tasks_max is not None:
        settings["pids.max"] = str(limits.tasks_max)
    if limits.io_weight is not None:
        settings["io.weight"] = f"default {limits.io_weight}"
    return settings


def _enable(base: Path, controllers: list[str]) -> None:
    """Hand `controllers` to base's children, moving jobd into a leaf first when base holds it."""
    control = base / "cgroup.subtree_control"
    if set(controllers) <= set(control.read_text().split()):
        return
    line = " ".join(f"+{name}" for name in controllers)
    try:
        control.write_text(line)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        leaf = base / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text("0")  # this process, every thread of it
        control.write_text(line)


def _other_processes(base: Path) -> list[int]:
    try:
        pids = [int(pid) for pid in (base / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if pid != os.getpid()]


def _populated(path: Path) -> bool:
    try:
        return "populated 1" in (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def _cgroup2_mount(mountinfo: Path) -> Path | None:
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    mounts = []
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            mounts.append(Path(left.split()[4]))
    # The unified hierarchy at its usual place first; a hybrid system also has one, without controllers.
    mounts.sort(key=lambda p: p != Path("/sys/fs/cgroup"))
    return mounts[0] if mounts else None


def _own_cgroup(cgroup_file: Path) -> str | None:
    try:
        for line in cgroup_file.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None
