"""Late and long-run alerts in a cluster of real `jobd serve` nodes on one PostgreSQL: every node
sees every active run, and each alert is sent once, by one node."""

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


def notifier(url: str) -> str:
    return f'[notifiers.hook]\nkind = "webhook"\nurl = "{url}"\nretry_backoff_s = 0.05\n'


async def test_a_long_run_is_alerted_once_by_one_node(tmp_path: Path, pg_db: str, hook: Hook) -> None:
    extra = (
        '[jobs.slow]\nhandler = "cluster_jobs:record_then_sleep"\nmax_concurrency = 8\noverlap = "allow"\n'
        'max_duration_s = 0.5\nnotify = { on_long = ["hook"] }\n' + notifier(hook.url)
    )
    async with nodes(tmp_path, pg_db, 2, extra) as daemons, aiohttp.ClientSession() as http:
        runs = [{"params": {"seconds": 4}} for _ in range(4)]
        async with http.post(f"{daemons[0].url}/api/v1/jobs/slow/trigger", json={"runs": runs}) as response:
            assert response.status == 202
            run_ids = {run["id"] for run in (await response.json())["runs"]}

        def all_alerted() -> bool:
            rows = query(pg_db, "SELECT count(*) FROM notifications WHERE event = 'long' AND status = 'delivered'")
            return int(rows[0][0]) >= len(run_ids)

        await wait_for(all_alerted, timeout=30)
        # both nodes looked at every run for a while longer: still one alert each
        await wait_for(lambda: sum(len(d.events("run_too_long")) for d in daemons) >= len(run_ids))
        await wait_for(lambda: len(query(pg_db, "SELECT 1 FROM runs WHERE job = 'slow' AND status = 'COMPLETED'")) == 4)
        sent = collections.Counter(json.loads(body)["run"]["id"] for body in hook.delivered)
        assert set(sent) == run_ids and set(sent.values()) == {1}
        assert sum(len(d.events("run_too_long")) for d in daemons) == len(run_ids)


async def test_a_late_fire_is_alerted_once_by_one_node(tmp_path: Path, pg_db: str, hook: Hook) -> None:
    # Every second a fire; the first run holds the job's one slot, the next fires queue and are late.
    extra = (
        '[jobs.tick]\nhandler = "cluster_jobs:record_then_sleep"\nschedule = "* * * * * *"\n'
        'overlap = "queue"\nlate_after_s = 1\nnotify = { on_late = ["hook"] }\n' + notifier(hook.url)
    )
    async with nodes(tmp_path, pg_db, 2, extra) as daemons:

        def late_alerts() -> int:
            rows = query(pg_db, "SELECT count(*) FROM notifications WHERE event = 'late' AND status = 'delivered'")
            return int(rows[0][0])

        await wait_for(lambda: late_alerts() >= 3, timeout=30)
        async with aiohttp.ClientSession() as http:
            await http.post(f"{daemons[0].url}/api/v1/jobs/tick/pause")
        times = collections.Counter(json.loads(body)["scheduled_for"] for body in hook.delivered)
        assert len(times) >= 3 and set(times.values()) == {1}
        doubled = query(
            pg_db,
            "SELECT payload::json->>'scheduled_for', count(*) FROM notifications WHERE event = 'late' "
            "GROUP BY 1 HAVING count(*) > 1",
        )
        assert doubled == []
