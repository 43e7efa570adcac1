from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobd.systemd import SystemdNotifier, clean_child_environ, listen_sockets

ROOT = Path(__file__).resolve().parent.parent


class FakeSystemd:
    """A real unix datagram socket in the role of systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(5.0)
        self.notify_socket = address

    def receive(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    async def receive_async(self) -> str:
        self.sock.setblocking(False)  # required by loop.sock_recv
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 4096), 5.0)
        return data.decode("utf-8")

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    address = str(tmp_path / "notify.sock") if request.param == "path" else f"@jobd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    yield fake
    fake.sock.close()


@pytest.fixture
def notifier(systemd: FakeSystemd) -> Iterator[SystemdNotifier]:
    n = SystemdNotifier.from_environ({"NOTIFY_SOCKET": systemd.notify_socket})
    yield n
    n.close()


def test_ready_sends_ready_and_status(systemd: FakeSystemd, notifier: SystemdNotifier) -> None:
    assert notifier.enabled
    notifier.ready("serving on 127.0.0.1:8080")
    assert systemd.receive() == "READY=1\nSTATUS=serving on 127.0.0.1:8080"


def test_status_stopping_and_extend_timeout(systemd: FakeSystemd, notifier: SystemdNotifier) -> None:
    notifier.status("3 runs active")
    notifier.stopping()
    notifier.extend_timeout(12.5)
    assert systemd.receive() == "STATUS=3 runs active"
    assert systemd.receive() == "STOPPING=1"
    assert systemd.receive() == "EXTEND_TIMEOUT_USEC=12500000"


def test_notify_joins_fields_and_flattens_newlines(systemd: FakeSystemd, notifier: SystemdNotifier) -> None:
    notifier.notify(STATUS="two\nlines", ERRNO=5)
    assert systemd.receive() == "STATUS=two lines\nERRNO=5"


def test_reloading_sends_monotonic_timestamp(systemd: FakeSystemd, notifier: SystemdNotifier) -> None:
    notifier.reloading()
    lines = systemd.receive().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0


def test_vanished_systemd_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert notifier.enabled
        notifier.ready("x")
        notifier.status("y")
    finally:
        notifier.close()


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative.sock"}, {"WATCHDOG_USEC": "1000"}],
)
def test_disabled_notifier_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = SystemdNotifier.from_environ(environ)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.stopping()
    assert notifier.watchdog_interval() is None
    assert notifier._sock is None  # nothing was even opened
    notifier.close()


async def test_disabled_watchdog_loop_returns_at_once(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": systemd.notify_socket})
    await asyncio.wait_for(notifier.watchdog_loop(), 5.0)
    notifier.close()
    assert systemd.nothing_waiting()


def test_watchdog_interval_respects_watchdog_pid(systemd: FakeSystemd) -> None:
    base = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_environ(base).watchdog_interval() == 15.0
    mine = SystemdNotifier.from_environ({**base, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval() == 15.0
    other = SystemdNotifier.from_environ({**base, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval() is None
    assert other.watchdog_interval(pid=os.getpid() + 1) == 15.0
    assert SystemdNotifier.from_environ({**base, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None


async def test_watchdog_loop_pings_repeatedly(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    )
    task = asyncio.create_task(notifier.watchdog_loop())
    try:
        received = [await systemd.receive_async() for _ in range(3)]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert received == ["WATCHDOG=1"] * 3


def test_clean_child_environ_drops_systemd_variables() -> None:
    environ = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "http",
        "MY_WATCHDOG_USEC": "kept",
    }
    assert clean_child_environ(environ) == {"PATH": "/usr/bin", "MY_WATCHDOG_USEC": "kept"}
    assert "NOTIFY_SOCKET" in environ  # the input is left alone


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_FDS": "1", "LISTEN_PID": "1"},
        {"LISTEN_FDS": "0", "LISTEN_PID": "MINE"},
        {"LISTEN_FDS": "one", "LISTEN_PID": "MINE"},
    ],
)
def test_listen_sockets_ignores_environ_not_meant_for_us(environ: dict[str, str]) -> None:
    environ = {k: str(os.getpid()) if v == "MINE" else v for k, v in environ.items()}
    assert listen_sockets(environ) == []


# Runs in a child: moves the passed socket to fd 3 the way systemd would, claims LISTEN_PID for
# itself (it cannot be known before the child exists), then serves one connection.
CHILD = """
import json, os, sys
from jobd.systemd import listen_sockets
fd, listen_pid = int(sys.argv[1]), sys.argv[2]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
socks = listen_sockets(os.environ)
print(json.dumps([[s.fileno(), s.family.name, s.type.name, os.get_inheritable(s.fileno())] for s in socks]), flush=True)
if socks:
    conn, _ = socks[0].accept()
    conn.sendall(b"hello from %d" % os.getpid())
    conn.close()
"""


def _spawn_activated(listener: socket.socket, listen_pid: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(listener.fileno()), listen_pid],
        pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_listen_sockets_takes_over_a_passed_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child = _spawn_activated(listener, "self")
        try:
            assert child.stdout is not None
            found = json.loads(child.stdout.readline())
            assert found == [[3, "AF_INET", "SOCK_STREAM", False]]
            with socket.create_connection(listener.getsockname(), timeout=5.0) as client:
                reply = client.recv(100)
            assert reply == b"hello from %d" % child.pid
            assert child.wait(timeout=10) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()


def test_listen_sockets_refuses_sockets_meant_for_another_pid() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child = _spawn_activated(listener, "1")
        try:
            out, _ = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert json.loads(out) == []
        assert child.returncode == 0
