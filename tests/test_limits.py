"""Resource limits: checked at load, enforced with cgroup v2 where this machine allows it, and
reported as not enforced (by `jobd check`, the start-up log, the job and the run's log) where not."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from process import DaemonProcess

from jobd.client import JobdClient
from jobd.config import ConfigError, parse_config
from jobd.config.limits import Limits
from jobd.runner.limits import RunCgroup, _cgroup2_mount, _own_cgroup, probe


def job_config(extra: str, handler: str = 'shell = "true"') -> dict[str, object]:
    return tomllib.loads(f"[jobs.j]\n{handler}\n{extra}\n")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('memory_max = "lots"', "jobs.j.memory_max: 'lots' is not a size like \"512M\" (a number with K, M, G or T)"),
        ('memory_max = "12K"', "jobs.j.memory_max: '12K' is below the minimum 1M"),
        ("memory_max = 512", "jobs.j.memory_max: must be a string, not an integer"),
        ('cpu_quota = "50"', "jobs.j.cpu_quota: '50' is not a percentage like \"50%\" (100% is one CPU)"),
        ('cpu_quota = "0%"', "jobs.j.cpu_quota: '0%' is out of range (from 1% to 100000%)"),
        ("tasks_max = 0", "jobs.j.tasks_max: 0 is out of range (must be from 1 to 4194304)"),
        ("io_weight = 20000", "jobs.j.io_weight: 20000 is out of range (must be from 1 to 10000)"),
    ],
)
def test_bad_limits_are_refused_in_one_line_naming_the_key(extra, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(job_config(extra), environ={})
    assert str(caught.value) == message


def test_limits_are_read():
    config = parse_config(
        job_config('memory_max = "512M"\ncpu_quota = "150%"\ntasks_max = 64\nio_weight = 200'), environ={}
    )
    limits = config.jobs["j"].limits
    assert limits is not None
    assert (limits.memory_max, limits.cpu_quota, limits.tasks_max, limits.io_weight) == (512 * 1024**2, 150.0, 64, 200)
    assert limits.as_json() == {"memory_max": "512M", "cpu_quota": "150%", "tasks_max": 64, "io_weight": 200}


def test_a_python_handler_cannot_have_limits():
    with pytest.raises(ConfigError) as caught:
        parse_config(job_config('memory_max = "1G"', handler='handler = "jobd.examples:noop"'), environ={})
    assert str(caught.value).startswith("jobs.j.memory_max: applies only to commands (command or shell)")


def write_config(directory: Path, jobs: str) -> Path:
    path = directory / "jobd.toml"
    path.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[store]\npath = "state/jobd.db"\n'
        f"[workers]\nshutdown_grace_s = 2\nkill_grace_s = 0.5\n{jobs}"
    )
    return path


async def test_where_limits_cannot_be_enforced_every_place_says_so_and_the_run_still_runs(tmp_path):
    limits = Limits(memory_max=64 * 1024 * 1024, memory_max_text="64M", tasks_max=10)
    missing = probe().missing(limits)
    if missing is None:
        pytest.skip("this machine enforces memory_max for jobd: nothing to report as not enforced")
    config = write_config(tmp_path, '[jobs.capped]\nshell = "echo ran"\nmemory_max = "64M"\ntasks_max = 10\n')
    problem = f"jobs.capped.memory_max: limits NOT enforced (memory_max, tasks_max): {missing}"
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jobd", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert f"jobd: warning: {problem}" in check.stderr.splitlines()
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        assert [line["problem"] for line in daemon.events("job_confinement")] == [problem]
        async with JobdClient(url) as client:
            run = await client.wait((await client.trigger("capped"))["id"])
            assert run["status"] == "COMPLETED"
            assert run["log_tail"].splitlines()[0].startswith("[stderr] jobd: resource limits NOT enforced: ")
            assert run["log_tail"].splitlines()[1] == "ran"
            job = await client.job("capped")
            assert job["limits"] == {"memory_max": "64M", "cpu_quota": None, "tasks_max": 10, "io_weight": None}
            assert job["limits_enforced"] is False
    finally:
        await daemon.cleanup()


def writable_cgroup2() -> tuple[Path, Path] | None:
    """A cgroup v2 mount and a directory in it this process may make children in (controllers or not)."""
    mount = _cgroup2_mount(Path("/proc/self/mountinfo"))
    own = _own_cgroup(Path("/proc/self/cgroup"))
    if mount is None or own is None:
        return None
    base = mount / own.lstrip("/")
    return (mount, base) if os.access(base, os.W_OK) and os.access(base / "cgroup.procs", os.W_OK) else None


async def test_a_child_enters_its_cgroup_before_exec_as_another_user_and_nothing_is_left(tmp_path):
    """The placement and the clean-up, on whatever cgroup v2 hierarchy this machine lets us write."""
    found = writable_cgroup2()
    if found is None:
        pytest.skip("no writable cgroup v2 hierarchy on this machine: cannot place a process in a cgroup")
    mount, base = found
    path = base / f"jobd-test-{os.getpid()}"
    path.mkdir()
    cgroup = RunCgroup(path, os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
    user = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    try:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            "grep '^0::' /proc/self/cgroup; id -u; setsid sleep 60 >/dev/null 2>&1 & echo $!",
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=cgroup.enter,
            **user,  # type: ignore[arg-type]
        )
        cgroup.close_fd()
        out, _ = await proc.communicate()
        where, uid, sleeper_pid = out.decode().splitlines()
        assert where == f"0::/{path.relative_to(mount)}"  # before sh ran anything
        assert int(uid) == (65534 if user else os.geteuid())
        sleeper = int(sleeper_pid)
        assert Path(f"/proc/{sleeper}").exists()  # left its process group: only the cgroup holds it
    finally:
        problem = await cgroup.remove()
    assert problem is None
    assert not path.exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{sleeper}").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not Path(f"/proc/{sleeper}").exists()


def memory_cgroup_for_a_daemon() -> tuple[Path | None, str]:
    """A fresh cgroup with the memory controller for a test daemon, as `Delegate=yes` would give
    jobd, or why this machine has none. Made below the tests' own cgroup, or below the root one
    (the tests' own holds processes, so it can hand controllers down only when it is the root)."""
    mount = _cgroup2_mount(Path("/proc/self/mountinfo"))
    own = _own_cgroup(Path("/proc/self/cgroup"))
    if mount is None or own is None:
        return None, "no cgroup v2 hierarchy is mounted here (cgroup v1 only)"
    why = ""
    for parent in dict.fromkeys([mount / own.lstrip("/"), mount]):
        if "memory" not in (parent / "cgroup.controllers").read_text().split():
            why = f"the cgroup v2 memory controller is not available in {parent} (held by cgroup v1)"
            continue
        try:
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            why = f"cannot enable the memory controller below {parent}: {exc.strerror}"
            continue
        path = parent / f"jobd-test-daemon-{os.getpid()}"
        path.mkdir()
        return path, ""
    return None, why


async def test_a_run_over_memory_max_is_killed_and_failed_with_out_of_memory(tmp_path, monkeypatch):
    delegated, why = memory_cgroup_for_a_daemon()
    if delegated is None:
        pytest.skip(f"memory_max cannot be enforced on this machine: {why}")
    hog = "b = bytearray(512 * 1024 * 1024); print(len(b))"
    config = write_config(
        tmp_path,
        f'[jobs.hog]\ncommand = ["{sys.executable}", "-c", "{hog}"]\nmemory_max = "32M"\n'
        '[jobs.small]\nshell = "echo fine"\nmemory_max = "32M"\ntasks_max = 20\n',
    )
    # The daemon starts in a cgroup of its own, as under systemd with Delegate=yes.
    python = tmp_path / "python-in-cgroup"
    python.write_text(f'#!/bin/sh\necho $$ > {delegated}/cgroup.procs && exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        monkeypatch.undo()
        assert daemon.events("job_confinement") == []
        async with JobdClient(url) as client:
            assert (await client.job("hog"))["limits_enforced"] is True
            run = await client.wait((await client.trigger("hog"))["id"])
            assert run["status"] == "FAILED"
            assert run["error"] == "out of memory (memory_max 32M)"
            fine = await client.wait((await client.trigger("small"))["id"])
            assert (fine["status"], fine["log_tail"]) == ("COMPLETED", "fine\n")
        assert sorted(p.name for p in delegated.iterdir() if p.is_dir()) == ["jobd-daemon"]  # runs' cgroups gone
    finally:
        await daemon.cleanup()
        for leaf in (delegated / "jobd-daemon", delegated):
            if leaf.exists():
                leaf.rmdir()
