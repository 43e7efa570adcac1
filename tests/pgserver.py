"""A throwaway PostgreSQL server, or the one a DSN names: the server start shared by the tests'
plugin (tests/postgres.py) and the benchmark suite (bench/postgres.py), free of pytest.

The cluster comes from the server binaries on PATH or under /usr/lib/postgresql/*/bin
(scripts/ensure-postgres installs them). PostgreSQL refuses to run as root, so under root the
cluster runs as an unprivileged system user created for it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

CLUSTER_USER = "jobd-pgtest"
# Data the tests can afford to lose: no fsync.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "200"}
_BINARIES = ("initdb", "pg_ctl", "postgres")
_databases = itertools.count(1)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then Debian's layout,
    newest version first."""
    found = [shutil.which(name) for name in _BINARIES]
    if all(found):
        return Path(str(found[0])).resolve().parent

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if all(os.access(bindir / name, os.X_OK) for name in _BINARIES):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cluster_user() -> str | None:
    """The user the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(CLUSTER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", CLUSTER_USER],
            check=True,
            capture_output=True,
        )
    return CLUSTER_USER


class PgServer:
    """A PostgreSQL server to use: DSNs of its databases, and (for a throwaway cluster)
    stopping and starting it."""

    restartable = False

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn

    def dsn(self, dbname: str) -> str:
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, prefix: str = "jobd_test") -> str:
        name = f"{prefix}_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self, mode: str = "fast") -> None:
        raise NotImplementedError("an external server (named by a DSN) is not stopped here")

    def start(self) -> None:
        raise NotImplementedError("an external server (named by a DSN) is not started here")

    def destroy(self) -> None:
        """Nothing to remove: the databases were dropped by their modules."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(bindir: Path) -> None:
    """Clusters left by a process (a pytest run, a benchmark) that was killed before its teardown:
    stopped and removed, so a killed run costs one cluster's lifetime, not a server forever."""
    for root in Path(tempfile.gettempdir()).glob("jobd-pg-*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        if (root / "data" / "postmaster.pid").exists():
            command = [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                command = ["runuser", "-u", CLUSTER_USER, "--", *command]
            subprocess.run(command, cwd=root, capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


class LocalCluster(PgServer):
    """initdb into a temporary directory, served on 127.0.0.1 at a free port and on a unix socket
    in that directory, trust authentication, with the server `settings` given (`-c name=value`)."""

    restartable = True

    def __init__(self, bindir: Path, settings: Mapping[str, str] = TEST_SETTINGS) -> None:
        self.bindir = bindir
        self.settings = dict(settings)
        self.user = _cluster_user()
        self.root = Path(tempfile.mkdtemp(prefix="jobd-pg-"))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.data = self.root / "data"
        self.port = 0
        self.running = False
        self._removed = False
        super().__init__("")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def init(self) -> None:
        result = self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        self._check(result, "initdb")
        self.start()

    def start(self) -> None:
        """Start the server, on the port it had before if it had one (clients reconnect there)."""
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
            options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
            if result.returncode == 0:
                break
        self._check(result, "pg_ctl start")
        self.running = True
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self, mode: str = "fast") -> None:
        result = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False
        self._check(result, "pg_ctl stop")

    def destroy(self) -> None:
        if self._removed:
            return
        self._removed = True
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _reason(dsn_envs: tuple[str, ...]) -> str:
    return (
        "PostgreSQL unavailable: no initdb/pg_ctl/postgres on PATH or under /usr/lib/postgresql/*/bin "
        f"and no {' or '.join(dsn_envs)} (bash scripts/ensure-postgres installs them)"
    )


def unavailable(dsn_envs: tuple[str, ...]) -> str | None:
    """Why no server can be had (no DSN in any of `dsn_envs`, no binaries), or None."""
    if any(os.environ.get(name) for name in dsn_envs) or find_bindir() is not None:
        return None
    return _reason(dsn_envs)


def open_server(dsn_envs: tuple[str, ...], settings: Mapping[str, str] = TEST_SETTINGS) -> PgServer | str:
    """The server named by the first of `dsn_envs` that is set, else a throwaway cluster started
    with `settings`; or why there is none. The caller destroys it."""
    for name in dsn_envs:
        external = os.environ.get(name)
        if external:
            return PgServer(external)
    bindir = find_bindir()
    if bindir is None:
        return _reason(dsn_envs)
    _remove_orphans(bindir)
    cluster = LocalCluster(bindir, settings)
    atexit.register(cluster.destroy)  # a process interrupted before its owner's teardown still removes it
    try:
        cluster.init()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
