"""systemd integration without a dependency: sd_notify, the watchdog and socket activation.

The notify protocol is one datagram of `KEY=value` lines sent to the unix socket named by
NOTIFY_SOCKET. Everything here is a no-op when jobd does not run under systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog
from structlog.typing import FilteringBoundLogger

# sd_listen_fds(3): passed sockets start right after stdin, stdout and stderr.
LISTEN_FDS_START = 3
_CHILD_DROP_PREFIXES = ("WATCHDOG_", "LISTEN_")


class SystemdNotifier:
    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._log = log if log is not None else structlog.get_logger("jobd.systemd")
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, log: FilteringBoundLogger | None = None) -> SystemdNotifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; malformed numbers count as absent."""
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
            log=log,
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """Send one datagram, e.g. notify(READY=1, STATUS="serving"). Never raises."""
        if self._address is None or not fields:
            return
        # A newline inside a value would start a new, unintended assignment.
        message = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            # sendto on every message, so a re-executed systemd (new socket) is still reached.
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            # The first failure is worth a warning; repeating it every watchdog tick is not.
            level = self._log.debug if self._warned else self._log.warning
            self._warned = True
            level("systemd_notify_failed", error=str(exc), fields=",".join(fields))

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def reloading(self) -> None:
        """Announce a configuration reload; send ready() once it is done."""
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time to start or stop (counted from now), e.g. while draining jobs."""
        self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def watchdog_interval(self, pid: int | None = None) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None if no watchdog is asked for us."""
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != (os.getpid() if pid is None else pid):
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def watchdog_loop(self) -> None:
        """Ping from the event loop itself, so a blocked loop stops pinging and systemd restarts us."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notify(WATCHDOG=1)
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def clean_child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of environ without the variables that describe jobd's own systemd contract.

    A job inheriting them could ping jobd's watchdog, claim readiness or grab its sockets.
    """
    return {
        key: value
        for key, value in environ.items()
        if key != "NOTIFY_SOCKET" and not key.startswith(_CHILD_DROP_PREFIXES)
    }


def listen_sockets(environ: Mapping[str, str], *, pid: int | None = None) -> list[socket.socket]:
    """Sockets passed by socket activation (LISTEN_FDS from fd 3), or [] when there are none for us.

    LISTEN_PID must name this process: the variables may have leaked from a parent.
    """
    count = _positive_int(environ.get("LISTEN_FDS"))
    listen_pid = _positive_int(environ.get("LISTEN_PID"))
    if count is None or listen_pid is None or listen_pid != (os.getpid() if pid is None else pid):
        return []
    sockets: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
        except OSError:
            continue  # not a socket (or already closed): nothing we could serve on
        sock.set_inheritable(False)  # jobs must not hold the listening socket open
        sockets.append(sock)
    return sockets


def _socket_address(address: str | None) -> str | None:
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    return None  # relative paths and other schemes (vsock:) are not supported


def _positive_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None
