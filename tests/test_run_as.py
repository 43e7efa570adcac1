"""A job's `user`, `group` and `umask`: checked at load, applied to a real `jobd serve`'s commands."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from process import DaemonProcess

from jobd.client import JobdClient
from jobd.config import ConfigError, parse_config

UNPRIVILEGED = "nobody"
NO_ENTRY = 54321  # a user id without a passwd entry
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root: the tests run unprivileged")


def job_config(extra: str, handler: str = 'shell = "true"') -> dict[str, object]:
    import tomllib

    return tomllib.loads(f"[jobs.j]\n{handler}\n{extra}\n")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('user = "no-such-user-here"', "jobs.j.user: no such user 'no-such-user-here'"),
        ('group = "no-such-group-here"', "jobs.j.group: no such group 'no-such-group-here'"),
        ('user = "a:b"', "jobs.j.user: 'a:b' is not a valid name"),
        ("user = true", "jobs.j.user: must be a name or a numeric id, not a boolean"),
        ("user = -1", "jobs.j.user: -1 is not a valid id"),
        ('umask = "999"', "jobs.j.umask: '999' is not an octal umask like \"027\""),
        ("umask = 27", "jobs.j.umask: must be a string, not an integer"),
    ],
)
def test_bad_identity_keys_are_refused_in_one_line_naming_the_key(extra, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(job_config(extra), environ={})
    assert str(caught.value) == message


@pytest.mark.parametrize("key", ['user = "nobody"', 'group = "0"', 'umask = "022"'])
def test_a_python_handler_cannot_have_a_user_group_or_umask(key):
    with pytest.raises(ConfigError) as caught:
        parse_config(job_config(key, handler='handler = "jobd.examples:noop"'), environ={})
    name = key.split(" ")[0]
    assert str(caught.value).startswith(f"jobs.j.{name}: applies only to commands (command or shell)")


def test_names_and_numeric_ids_are_taken():
    config = parse_config(job_config('user = 65534\ngroup = "0"\numask = "0027"'), environ={})
    run_as = config.jobs["j"].run_as
    assert run_as is not None
    assert (run_as.user, run_as.group, run_as.umask) == ("65534", "0", 0o27)
    assert parse_config(job_config(""), environ={}).jobs["j"].run_as is None


@pytest.fixture
def shared_dir():
    """A directory the unprivileged user can write (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="jobd-run-as-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def write_config(directory: Path, jobs: str) -> Path:
    path = directory / "jobd.toml"
    path.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[store]\npath = "state/jobd.db"\n'
        f"[workers]\nshutdown_grace_s = 2\nkill_grace_s = 0.5\n{jobs}"
    )
    return path


@needs_root
async def test_a_command_runs_as_its_user_with_its_groups_home_and_umask(tmp_path, shared_dir):
    entry = pwd.getpwnam(UNPRIVILEGED)
    out = shared_dir / "made.txt"
    config = write_config(
        tmp_path,
        f'[jobs.who]\nshell = "id -u; id -g; id -G; echo $HOME $USER $LOGNAME; touch {out}"\n'
        f'user = "{UNPRIVILEGED}"\numask = "027"\n'
        f'[jobs.own-home]\nshell = "echo $HOME"\nuser = "{UNPRIVILEGED}"\nenv = {{ HOME = "/srv/x" }}\n'
        f'[jobs.by-number]\nshell = "id -u; id -G; echo $HOME $USER"\nuser = {NO_ENTRY}\n',
    )
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        async with JobdClient(url) as client:
            run = await client.wait((await client.trigger("who"))["id"])
            assert run["status"] == "COMPLETED", run
            uid, gid, groups, names = run["log_tail"].splitlines()
            assert (int(uid), int(gid)) == (entry.pw_uid, entry.pw_gid)
            assert sorted(map(int, groups.split())) == sorted(os.getgrouplist(UNPRIVILEGED, entry.pw_gid))
            assert names == f"{entry.pw_dir} {UNPRIVILEGED} {UNPRIVILEGED}"
            made = out.stat()
            assert made.st_uid == entry.pw_uid
            assert stat.S_IMODE(made.st_mode) == 0o640  # touch asks for 0666; umask 027 takes 0137 away
            numbered = await client.wait((await client.trigger("by-number"))["id"])
            assert numbered["log_tail"] == f"{NO_ENTRY}\n{NO_ENTRY}\n/ {NO_ENTRY}\n"  # its own group, no other
            own = await client.wait((await client.trigger("own-home"))["id"])
            assert own["log_tail"] == "/srv/x\n"  # the job's env wins over the user's HOME
            job = await client.job("who")
            assert job["run_as"] == {"user": UNPRIVILEGED, "group": None, "umask": "027"}
            assert (job["limits"], job["limits_enforced"]) == (None, None)
    finally:
        await daemon.cleanup()


@needs_root
async def test_without_setuid_capabilities_check_says_so_and_the_run_fails_as_no_one(tmp_path, monkeypatch):
    """jobd as root but without CAP_SETUID/CAP_SETGID (taken out of its bounding set)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot start jobd without CAP_SETUID")
    config = write_config(tmp_path, f'[jobs.who]\nshell = "id -u"\nuser = "{UNPRIVILEGED}"\n')
    # An interpreter that runs without the two capabilities: what DaemonProcess starts jobd with.
    python = tmp_path / "python-without-setuid"
    python.write_text(f'#!/bin/sh\nexec setpriv --bounding-set=-setuid,-setgid -- "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    check = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-m", "jobd", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    problem = (
        "jobs.who.user: jobd lacks CAP_SETUID, CAP_SETGID or CAP_KILL (run it as root), "
        "so runs of this job will fail instead of running as 'nobody'"
    )
    assert f"jobd: warning: {problem}" in check.stderr.splitlines()
    monkeypatch.setattr(sys, "executable", str(python))
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        assert [line["problem"] for line in daemon.events("job_confinement")] == [problem]
        async with JobdClient(url) as client:
            run = await client.wait((await client.trigger("who"))["id"])
        assert run["status"] == "FAILED"
        assert run["error"] == "cannot run as nobody: jobd lacks CAP_SETUID, CAP_SETGID or CAP_KILL (run it as root)"
        assert not run["log_tail"]  # nothing ran
    finally:
        await daemon.cleanup()


@needs_root
async def test_ambient_capabilities_of_a_non_root_jobd_are_refused_by_check(shared_dir):
    """They would pass to the commands, also to one that switched user: jobd says so."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot give jobd ambient capabilities")
    config = shared_dir / "jobd.toml"  # readable by the unprivileged user jobd runs as here
    config.write_text('[jobs.who]\nshell = "id -u"\nuser = "daemon"\n')
    config.chmod(0o644)
    caps = "+setuid,+setgid,+kill"
    entry = pwd.getpwnam(UNPRIVILEGED)
    check = await asyncio.to_thread(
        subprocess.run,
        [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            sys.executable,
            "-m",
            "jobd",
            "check",
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert (
        "jobd: warning: jobs.who.user: jobd has CAP_SETUID, CAP_SETGID and CAP_KILL as ambient capabilities, "
        "which every command it starts inherits, also as 'daemon': its runs will fail; run jobd as root"
    ) in check.stderr.splitlines()
