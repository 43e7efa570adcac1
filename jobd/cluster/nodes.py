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
TakeOver = Callable[[Conn, Sequence[Claimed], str], Awaitable[None]]


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
        log: Any = None,
    ) -> None:
        self._connection = connection
        self.config = config
        self.name = config.node_name
        self.host = host
        self.pid = pid
        self._take_over = take_over
        self._fence = fence
        self._unfence = unfence
        self.log = log or structlog.get_logger("jobd.cluster")
        self.fenced = False
        self.reachable = True  # the last heartbeat got through
        self._last_beat = 0.0
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        async with self._connection() as conn:
            await cluster.register_node(conn, self.name, self.host, self.pid)
        self._last_beat = asyncio.get_running_loop().time()

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
            async with asyncio.timeout(self.config.heartbeat_s), self._connection() as conn:
                alive = await cluster.heartbeat(conn, self.name)
                if not alive and not self.fenced:
                    self._set_fenced("declared dead by the cluster")
                if not alive:
                    # Its runs were taken over: the node may come back as new, with spent tokens.
                    await cluster.register_node(conn, self.name, self.host, self.pid)
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
        try:
            async with (
                asyncio.timeout(self.config.dead_after_s),
                self._connection() as conn,
                cluster.reaper_lock(conn) as held,
            ):
                if not held:
                    return
                async with conn.transaction():
                    dead = await cluster.declare_dead(conn, self.config.dead_after_s)
                    if dead.names:
                        self.log.warning("nodes_declared_dead", nodes=dead.names, runs=len(dead.runs))
                    if dead.runs:
                        await self._take_over(conn, dead.runs, "interrupted: its node stopped answering")
        except (psycopg.Error, TimeoutError) as exc:
            self.log.warning("reaper_failed", error=str(exc) or type(exc).__name__)

    async def nodes(self) -> list[cluster.Node]:
        async with self._connection() as conn:
            return await cluster.list_nodes(conn, self.config.dead_after_s)
