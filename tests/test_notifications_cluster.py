"""Notifications in a cluster of real `jobd serve` nodes on one PostgreSQL: each is delivered by
one node, once, whichever node ran its run."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import aiohttp
import pytest
from clusterhelp import nodes, query
from conftest import wait_for
from notifyhelp import Hook, hook  # noqa: F401 (the fixture)

pytest.importorskip("jobd.store.postgres.store", reason="PostgresStore is not in this tree yet")


async def test_each_notification_is_delivered_once_by_one_node(tmp_path: Path, pg_db: str, hook: Hook) -> None:
    extra = (
        '[jobs.shout]\nhandler = "cluster_jobs:record"\nmax_concurrency = 64\noverlap = "allow"\n'
        'notify = { on_success = ["hook"] }\n'
        f'[notifiers.hook]\nkind = "webhook"\nurl = "{hook.url}"\nretry_backoff_s = 0.05\n'
    )
    async with nodes(tmp_path, pg_db, 3, extra) as daemons, aiohttp.ClientSession() as http:
        async with http.post(
            f"{daemons[0].url}/api/v1/jobs/shout/trigger", json={"runs": [{"params": {"i": i}} for i in range(40)]}
        ) as response:
            assert response.status == 202
            run_ids = {run["id"] for run in (await response.json())["runs"]}

        def delivered() -> bool:
            rows = query(pg_db, "SELECT count(*) FROM notifications WHERE status = 'delivered'")
            return int(rows[0][0]) == len(run_ids)

        await wait_for(delivered, timeout=30)
        sent = collections.Counter(json.loads(body)["run"]["id"] for body in hook.delivered)
        assert set(sent) == run_ids and set(sent.values()) == {1}
        # every node logs what it delivered: together, each notification once (their logs may lag the database)
        await wait_for(lambda: sum(len(d.events("notification_delivered")) for d in daemons) >= len(run_ids))
        assert sum(len(d.events("notification_delivered")) for d in daemons) == len(run_ids)
