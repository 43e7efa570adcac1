"""GET /metrics after real runs, parsed with prometheus-client's own parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

from jobd.app import Daemon
from jobd.web import create_app
from tests.fakeclock import FakeClock

NOOP = {"handler": "sample_jobs:noop", "overlap": "allow"}
FAILS = {"handler": "sample_jobs:fails", "overlap": "allow"}
SLEEPY = {"handler": "sample_jobs:sleepy", "overlap": "allow"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: Any, headers: dict[str, str] | None = None) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())


async def test_run_metrics_after_real_runs(start_daemon):
    h = await start_daemon({"noop": NOOP, "bad": FAILS, "slow": SLEEPY})
    for job in ("noop", "noop", "bad"):
        await h.finished((await h.trigger(job))["id"])
    slow = await h.trigger("slow", {"seconds": 30})
    await wait_for(lambda: h.daemon.pool.busy == 1)
    queued = await h.trigger("slow", {"seconds": 30})  # max_concurrency 1: waits
    await h.client.get("/api/v1/runs/999999")
    await h.client.get(f"/api/v1/runs/{slow['id']}")
    await h.client.get("/no/such/path/42")
    subscriber = h.daemon.bus.subscribe(capacity=1)
    try:
        await h.finished((await h.trigger("noop"))["id"])  # several events for a buffer of one: cut off
        samples = await scrape(h.client)
    finally:
        subscriber.close()

    assert value(samples, "jobd_runs_finished_total", job="noop", status="COMPLETED") == 3
    assert value(samples, "jobd_runs_finished_total", job="bad", status="FAILED") == 1
    assert value(samples, "jobd_runs_finished_total", job="slow", status="COMPLETED") is None
    assert value(samples, "jobd_run_duration_seconds_count", job="noop") == 3
    assert value(samples, "jobd_run_duration_seconds_bucket", job="noop", le="+Inf") == 3
    assert value(samples, "jobd_run_duration_seconds_sum", job="bad") >= 0
    assert value(samples, "jobd_queue_depth") == 1
    assert value(samples, "jobd_workers_busy") == 1
    assert value(samples, "jobd_workers_total") == h.daemon.pool.concurrency
    assert value(samples, "jobd_ready") == 1
    assert value(samples, "jobd_events_published_total") >= 10
    assert value(samples, "jobd_events_dropped_total") >= 1
    # No webhook configured: nothing sent, nothing given up on.
    assert value(samples, "jobd_alert_webhooks_sent_total") == 0
    assert value(samples, "jobd_alert_webhooks_failed_total") == 0
    assert value(samples, "jobd_event_subscribers") == 0  # the cut-off subscriber is gone
    assert value(samples, "jobd_sse_streams_open") == 0
    requests = {labels: n for (name, labels), n in samples.items() if name == "jobd_http_requests_total"}
    routes = {dict(labels)["route"] for labels in requests}
    assert (
        value(samples, "jobd_http_requests_total", method="POST", route="/api/v1/jobs/{name}/trigger", status="202")
        == 6
    )
    assert value(samples, "jobd_http_requests_total", method="GET", route="/api/v1/runs/{run_id}", status="404") == 1
    assert value(samples, "jobd_http_requests_total", method="GET", route="/api/v1/runs/{run_id}", status="200") == 1
    assert value(samples, "jobd_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any(route.startswith("/no/") or route[-1:].isdigit() for route in routes), routes

    async with h.client.get("/api/v1/events") as stream:
        await stream.content.readany()
        during = await scrape(h.client)
    assert value(during, "jobd_sse_streams_open") == 1
    assert value(during, "jobd_event_subscribers") == 1
    later = await scrape(h.client)
    assert value(later, "jobd_http_requests_total", method="GET", route="/metrics", status="200") == 2
    for run in (queued, slow):
        response = await h.client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status == 200
    after = await scrape(h.client)
    assert value(after, "jobd_runs_finished_total", job="slow", status="CANCELLED") == 2
    assert value(after, "jobd_queue_depth") == 0 and value(after, "jobd_workers_busy") == 0


async def test_fire_lag_and_skipped_fires_from_the_scheduler(aiohttp_client, make_config):
    # The scheduler runs on a settable clock set 10 minutes back, so its cron run starts ~10 minutes
    # "late" in real time; a second fire while that run is still going is skipped (overlap=skip).
    real = datetime.now(UTC).replace(microsecond=0)
    start = real - timedelta(minutes=10, seconds=real.second) + timedelta(seconds=30)
    clock = FakeClock(start)
    daemon = Daemon(
        make_config({"tick": {"handler": "sample_jobs:sleepy", "schedule": "* * * * *"}}),
        environ={"PATH": "/usr/bin:/bin"},
        clock=clock,
    )
    client = await aiohttp_client(create_app(daemon))
    await clock.run_until(start + timedelta(seconds=31))
    run = await wait_for(lambda: daemon.runs.active_of("tick"))
    await wait_for(lambda: daemon.runs.is_running("tick"))
    await clock.run_until(start + timedelta(seconds=91))
    await wait_for(lambda: daemon.runs.job_state("tick").skipped_fires == 1)
    response = await client.post(f"/api/v1/runs/{run[0].id}/cancel")
    assert response.status == 200
    samples = await scrape(client)
    assert value(samples, "jobd_scheduler_skipped_fires_total", job="tick") == 1
    assert value(samples, "jobd_scheduler_fire_lag_seconds_count") == 1
    lag = value(samples, "jobd_scheduler_fire_lag_seconds_sum")
    assert 8 * 60 < lag < 12 * 60, lag
    assert value(samples, "jobd_scheduler_fire_lag_seconds_bucket", le="60.0") == 0


async def test_metrics_token(start_daemon):
    h = await start_daemon({"noop": NOOP}, metrics={"token": "scrape-me"})
    for headers in (None, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        response = await h.client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.content_type == "application/problem+json"
        assert "scrape-me" not in await response.text()
    await scrape(h.client, {"Authorization": "Bearer scrape-me"})


async def test_metrics_with_api_tokens(start_daemon, tmp_path):
    tokens = {"tokens": [{"name": "ci", "token": "read-token", "scope": "read"}]}
    h = await start_daemon({"noop": NOOP}, auth=tokens)
    response = await h.client.get("/metrics")
    assert response.status == 401 and response.content_type == "application/problem+json"
    await scrape(h.client, {"Authorization": "Bearer read-token"})
    both = await start_daemon(
        {"noop": NOOP}, auth=tokens, metrics={"token": "scrape-me"}, store={"path": str(tmp_path / "both" / "jobd.db")}
    )
    await scrape(both.client, {"Authorization": "Bearer read-token"})
    await scrape(both.client, {"Authorization": "Bearer scrape-me"})
    response = await both.client.get("/metrics")
    assert response.status == 401


async def test_each_daemon_has_its_own_registry(start_daemon, tmp_path):
    one = await start_daemon({"noop": NOOP})
    two = await start_daemon({"noop": NOOP}, store={"path": str(tmp_path / "two" / "jobd.db")})
    await one.finished((await one.trigger("noop"))["id"])
    assert value(await scrape(one.client), "jobd_runs_finished_total", job="noop", status="COMPLETED") == 1
    assert value(await scrape(two.client), "jobd_runs_finished_total", job="noop", status="COMPLETED") is None
    global_names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("jobd_") for name in global_names)
