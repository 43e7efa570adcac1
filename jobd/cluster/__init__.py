"""Cluster mode: several jobd nodes on one PostgreSQL (see docs/cluster.md).

backend   PostgresBackend, the RunBackend of a cluster
writes    a change and its event row in one transaction
writer    group commit of this node's run ends and progress
runtable  the cluster's active runs, kept from the tailed events
eventfeed the events table tailed into the in-memory bus
wakeup    LISTEN, the poll behind it, and coalesced NOTIFY
nodes     heartbeat, the reaper and fencing
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from jobd.cluster.backend import PostgresBackend
from jobd.config import Config
from jobd.store.postgres import connect, open_pool
from jobd.store.postgres.schema import migrate

if TYPE_CHECKING:
    from jobd.store.postgres.store import PostgresStore


def cluster_backend(config: Config, log: Any) -> tuple[PostgresStore, PostgresBackend]:
    """The store and the backend of a node on the PostgreSQL at `[store] url`."""
    from jobd.store.postgres.store import PostgresStore

    url = config.store.url
    assert url is not None
    pool = open_pool(
        url,
        min_size=2,
        max_size=max(4, min(16, config.workers.concurrency // 4 + 4)),
        # A node stuck that long mid-transaction is fencing itself: its locks go with it.
        idle_in_transaction_s=config.cluster.dead_after_s - config.cluster.heartbeat_s,
    )
    store = PostgresStore(pool)
    backend = PostgresBackend(
        jobs=config.jobs,
        pool=pool,
        dsn=url,
        store=store,
        config=config.cluster,
        capacity=config.workers.concurrency,
        host=socket.gethostname(),
        pid=os.getpid(),
        log=log,
    )
    return store, backend


async def migrate_at_start(url: str) -> None:
    """The schema, brought up to date under the advisory lock (N nodes may start at once)."""
    conn = await connect(url)
    async with conn:
        await migrate(conn)


__all__ = ["PostgresBackend", "cluster_backend", "migrate_at_start"]
