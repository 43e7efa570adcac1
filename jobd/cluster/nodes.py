"""This node's life in the cluster: its heartbeat, the reaper, and fencing.

The heartbeat is written in database time every `heartbeat_s`. Each node also tries to be the
reaper (one at a time, under an advisory lock): it declares dead the nodes silent for
`dead_after_s` and ends their PROCESSING runs as a crash would (on_interrupt). A node that could
not beat for `dead_after_s - heartbeat_s`, or that finds itself declared dead, is fenced: it stops
claiming and stops its children before anyone takes its runs over, and its claim tokens are spent
anyway, so nothing it writes late changes a run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
import structlog

from jobd.config import ClusterConfig
from jobd.store.postgres import cluster
from jobd.store.postgres.runs import Claimed, Conn

Connection = Callable[[], contextlib.AbstractAsyncContextManager[Conn]]
# Ends the runs of dead nodes in the caller's transaction; returns what to call once committed.
TakeOver = Callable[[Conn, Sequence[Claimed], str], Awaitable[Callable[[], None]]]


class NodeLife:
    def __init__(
        self,
        connection: Connection,
        config: ClusterConfig,
        *,
        host: str,
        pid: int,
        take_over: TakeOver,
        fence: Callable[[str], None],
        unfence: Callable[[], None],
        beat_connection: Connection | None = None,
        log: Any = None,
    ) -> None:
        self._connection = connection
        self._beat_connection = beat_connection or connection  # best its own: see OwnConnection
        self.config = config
        self.name = config.node_name
        self.host = host
        self.pid = pid
        self._take_over = take_over
        self._fence = fence
        self._unfence = unfence
        self.log = log or structlog.get_logger("jobd.cluster")
        self.url = config.advertise_url  # where the other nodes reach this one; see advertise()
        self.fenced = False
        self.reachable = True  # the last heartbeat got through
        self._last_beat = 0.0
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        async with self._connection() as conn:
            await cluster.register_node(conn, self.name, self.host, self.pid, self.url)
        self._last_beat = asyncio.get_running_loop().time()

    async def advertise(self, bound: Sequence[object]) -> None:
        """Once the server listens: record where the other nodes reach this one, unless
        `[cluster] advertise_url` says it (the default comes from the bound address)."""
        if self.url is None:
            self.url = default_url(bound, self.host)
        try:
            async with asyncio.timeout(self.config.dead_after_s), self._connection() as conn:
                await cluster.set_node_url(conn, self.name, self.url)
        except (psycopg.Error, TimeoutError) as exc:  # the next heartbeat writes it
            self.log.warning("node_advertise_failed", node=self.name, error=str(exc) or type(exc).__name__)
            return
        self.log.info("node_advertised", node=self.name, url=self.url)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-node")

    async def stop(self, *, leave: bool) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if leave:
            with contextlib.suppress(psycopg.Error, TimeoutError):
                async with asyncio.timeout(2), self._connection() as conn:
                    await cluster.leave(conn, self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            await self.beat()
            if not self.fenced:
                await self.reap()

    async def beat(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.heartbeat_s), self._beat_connection() as conn:
                alive = await cluster.heartbeat(conn, self.name, self.url)
                if not alive and not self.fenced:
                    self._set_fenced("declared dead by the cluster")
                if not alive:
                    # Its runs were taken over: the node may come back as new, with spent tokens.
                    await cluster.register_node(conn, self.name, self.host, self.pid, self.url)
            self.reachable = True
            self._last_beat = loop.time()
            if self.fenced:
                self.fenced = False
                self.log.warning("node_unfenced", node=self.name)
                self._unfence()
        except (psycopg.Error, TimeoutError) as exc:
            self.reachable = False
            silent = loop.time() - self._last_beat
            self.log.warning("heartbeat_failed", node=self.name, error=str(exc) or type(exc).__name__)
            if not self.fenced and silent >= self.config.dead_after_s - self.config.heartbeat_s:
                self._set_fenced(f"no heartbeat for {silent:.1f} s")

    def _set_fenced(self, reason: str) -> None:
        self.fenced = True
        self.log.error("node_fenced", node=self.name, reason=reason)
        self._fence(reason)

    async def reap(self) -> None:
        committed = None
        try:
            async with (
                asyncio.timeout(self.config.dead_after_s),
                self._connection() as conn,
                cluster.reaper_lock(conn, hold_s=self.config.dead_after_s - self.config.heartbeat_s) as held,
            ):
                if not held:
                    return
                dead = await cluster.declare_dead(conn, self.config.dead_after_s)
                if dead.names:
                    self.log.warning("nodes_declared_dead", nodes=dead.names, runs=len(dead.runs))
                if dead.runs:
                    committed = await self._take_over(conn, dead.runs, "interrupted: its node stopped answering")
        except (psycopg.Error, TimeoutError) as exc:
            self.log.warning("reaper_failed", error=str(exc) or type(exc).__name__)
            return
        if committed is not None:  # reaper_lock's transaction has committed the take-over
            committed()

    async def nodes(self) -> list[cluster.Node]:
        async with self._connection() as conn:
            return await cluster.list_nodes(conn, self.config.dead_after_s)

    async def cluster_key(self) -> bytes:
        async with self._connection() as conn:
            return await cluster.cluster_key(conn)

    async def node(self, name: str) -> cluster.Node | None:
        async with self._connection() as conn:
            return await cluster.get_node(conn, name, self.config.dead_after_s)


def default_url(bound: Sequence[object], host_name: str) -> str | None:
    """http://HOST:PORT of the first TCP address the server is bound to; a wildcard address
    (0.0.0.0, ::) becomes this machine's name. None when it listens on no TCP socket."""
    for address in bound:
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = str(address[0]), int(address[1])
            if host in ("0.0.0.0", "::", ""):
                host = host_name
            return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return None
