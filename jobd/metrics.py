"""Prometheus metrics of one daemon, in a registry of its own (no global registry, no global state).

Two kinds: what happens is counted as it happens (finished runs through the run backend's on_finished,
HTTP requests through a middleware), and what the daemon holds (queue, workers, streams, the event
bus, skipped fires) is read from it at scrape time by a collector, so nothing has to be kept in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobd.config import JobConfig
from jobd.config.notifiers import ALERTS_NOTIFIER
from jobd.lifecycle.groups import usage
from jobd.models import Run, TriggerSource
from jobd.store import JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNMATCHED = "unmatched"  # the route label of requests no route matched (keeps label values bounded)


class DaemonCollector(Collector):
    """Gauges and counters read from the daemon's own state at each scrape."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        runs, bus = daemon.runs, daemon.bus
        yield GaugeMetricFamily(
            "jobd_ready", "1 when jobd accepts work, 0 while starting or stopping.", value=1 if daemon.ready else 0
        )
        yield GaugeMetricFamily("jobd_queue_depth", "Runs waiting to start (PENDING).", value=runs.queued_count())
        yield GaugeMetricFamily("jobd_workers_busy", "Workers running a run.", value=daemon.pool.busy)
        yield GaugeMetricFamily("jobd_workers_total", "Workers in the pool.", value=daemon.pool.concurrency)
        yield from group_metrics(daemon)
        skipped = CounterMetricFamily(
            "jobd_scheduler_skipped_fires",
            "Cron fires skipped: the overlap policy refused them, or the job's calendars excluded them.",
            labels=["job"],
        )
        for name, state in sorted(runs.job_states.items()):
            skipped.add_metric([name], state.skipped_fires)
        yield skipped
        yield GaugeMetricFamily(
            "jobd_sse_streams_open", "Server-Sent Events streams open now.", value=open_streams(daemon)
        )
        yield GaugeMetricFamily("jobd_event_subscribers", "Subscribers of the event bus.", value=bus.subscriber_count)
        yield CounterMetricFamily("jobd_events_published", "Events published on the bus.", value=bus.published)
        deliverer = daemon.notifications.deliverer
        yield CounterMetricFamily(
            "jobd_alert_webhooks_sent",
            "Alert webhook messages this process delivered (the alerts notifier's).",
            value=deliverer.delivered_to[ALERTS_NOTIFIER],
        )
        yield CounterMetricFamily(
            "jobd_alert_webhooks_failed",
            "Alert webhook messages this process gave up on (retries used up, or refused).",
            value=deliverer.failed_to[ALERTS_NOTIFIER],
        )
        yield CounterMetricFamily(
            "jobd_notifications_delivered", "Notifications this process delivered.", value=deliverer.delivered
        )
        yield CounterMetricFamily(
            "jobd_notifications_failed",
            "Notifications this process gave up on (max_attempts used up, or refused).",
            value=deliverer.failed,
        )
        yield CounterMetricFamily(
            "jobd_events_dropped",
            "Events not delivered because a subscriber fell behind and was cut off.",
            value=bus.dropped,
        )


def group_metrics(daemon: Any) -> Iterator[Metric]:
    """Each shared concurrency group: its runs PROCESSING, its limit, its runs waiting (PENDING)."""
    running = GaugeMetricFamily("jobd_group_running", "Runs of the group's jobs PROCESSING.", labels=["group"])
    limit = GaugeMetricFamily("jobd_group_limit", "The group's max_concurrency.", labels=["group"])
    waiting = GaugeMetricFamily("jobd_group_waiting", "Runs of the group's jobs PENDING.", labels=["group"])
    for group in usage(daemon.config.groups, daemon.config.jobs, daemon.runs.active.values()):
        running.add_metric([group["name"]], group["running"])
        limit.add_metric([group["name"]], group["limit"])
        waiting.add_metric([group["name"]], group["waiting"])
    yield from (running, limit, waiting)


def open_streams(daemon: Any) -> int:
    """Open SSE streams, as counted by the web app (Metrics.count_streams); 0 for a daemon without one."""
    counter = daemon.metrics.stream_counter
    return 0 if counter is None else int(counter())


def route_label(request: web.Request) -> str:
    """The route's pattern (/api/v1/runs/{run_id}), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


class Metrics:
    def __init__(self, daemon: Any) -> None:
        self.registry = CollectorRegistry()
        self.runs_finished = Counter(
            "jobd_runs_finished", "Runs that reached a final state.", ["job", "status"], registry=self.registry
        )
        self.run_duration = Histogram(
            "jobd_run_duration_seconds",
            "How long finished runs took, start to end.",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.fire_lag = Histogram(
            "jobd_scheduler_fire_lag_seconds",
            "How late cron runs started: their start minus their scheduled time.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "jobd_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.stream_counter: Callable[[], int] | None = None
        self.registry.register(DaemonCollector(daemon))
        # labels() validates and locks on every call; a finished run needs the same few children.
        self._finished_by: dict[tuple[str, str], Any] = {}
        self._duration_of: dict[str, Any] = {}
        self._requests_by: dict[tuple[str, str, int], Any] = {}

    def count_streams(self, counter: Callable[[], int]) -> None:
        """Where open SSE streams are counted (the streams live in the web app, not the daemon)."""
        self.stream_counter = counter

    def run_finished(self, job: JobConfig, run: Run, state: JobState, previous_failures: int) -> None:
        """A finished-run hook (RunBackend.on_finished)."""
        key = (run.job, run.status.value)
        finished = self._finished_by.get(key)
        if finished is None:
            finished = self._finished_by[key] = self.runs_finished.labels(*key)
        finished.inc()
        if run.duration_ms is not None:
            duration = self._duration_of.get(run.job)
            if duration is None:
                duration = self._duration_of[run.job] = self.run_duration.labels(run.job)
            duration.observe(run.duration_ms / 1000)
        if run.triggered_by is TriggerSource.CRON and run.scheduled_for is not None and run.started_at is not None:
            self.fire_lag.observe(max(0, run.started_at - run.scheduled_for) / 1000)

    async def count_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """An `on_response_prepare` handler: every answer is counted as it starts (an error mapped to
        problem+json, a stream), with no middleware frame held for as long as a stream is open."""
        key = (request.method, route_label(request), response.status)
        child = self._requests_by.get(key)
        if child is None:
            child = self.http_requests.labels(key[0], key[1], str(key[2]))
            if len(self._requests_by) < 1000:  # clients choose the method: keep the cache bounded
                self._requests_by[key] = child
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
