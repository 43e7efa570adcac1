"""An asyncio client for jobd's HTTP API, usable from any asyncio program.

async with JobdClient("http://127.0.0.1:8080", token="...") as client:
    run = await client.trigger("nightly", params={"day": "2026-11-23"})
    run = await client.get_run(run["id"])
    async for update in client.watch(run["id"]):     # live, over Server-Sent Events
        print(update["status"], update["progress"], update["message"])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, cast

import aiohttp

from jobd import models
from jobd.models import status_update_of
from jobd.sseparse import SSEParser, backoff_s

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL_STATUSES = frozenset(status.value for status in models.TERMINAL_STATUSES)
# A stream that stays silent this long (heartbeats included) is taken as broken.
STREAM_IDLE_TIMEOUT_S = 60.0
# Streams that open but end without a single message before watch() falls back to polling.
BROKEN_STREAMS_BEFORE_POLLING = 3


class ApiError(Exception):
    """jobd answered with a problem+json error."""

    def __init__(self, status: int, title: str, detail: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = dict(body or {})


def _api_error(status: int, reason: str | None, text: str) -> ApiError:
    """The error for an answer of `status`: from its problem+json body, or from whatever a proxy sent."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    return ApiError(status, str(body.get("title", reason or "")), str(body.get("detail", text[:200])), body)


class JobdClient:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> JobdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        async with self.session.request(
            method, self.url + path, json=json_body, params=query, headers=self.headers(headers)
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise _api_error(response.status, response.reason, text)
            if response.content_type == "application/json":
                try:
                    return json.loads(text)
                except ValueError:
                    raise ApiError(
                        response.status, "Invalid response", f"{method} {path} did not answer JSON: {text[:100]!r}"
                    ) from None
            return text

    # -- jobs ------------------------------------------------------------------------------

    async def jobs(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", (await self.request("GET", "/api/v1/jobs"))["jobs"])

    async def job(self, name: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("GET", _job_path(name)))["job"])

    async def trigger(
        self,
        job: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        overlap: str | None = None,
        triggered_by: str = "api",
        run_at: str | None = None,
        delay_s: float | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """`run_at` (ISO-8601 with a time zone) or `delay_s`: the run waits PENDING until then.
        `priority`: the run's, instead of its job's."""
        body: dict[str, Any] = {"params": dict(params or {}), "triggered_by": triggered_by}
        if overlap:
            body["overlap"] = overlap
        body.update(_timing(run_at, delay_s))
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return cast(
            "dict[str, Any]",
            (await self.request("POST", _job_path(job, "trigger"), json_body=body, headers=headers))["run"],
        )

    async def trigger_many(
        self,
        job: str,
        params: Sequence[Mapping[str, Any]],
        *,
        triggered_by: str = "api",
        overlap: str | None = None,
        run_at: str | None = None,
        delay_s: float | None = None,
        priority: int | None = None,
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"runs": [{"params": dict(p)} for p in params], "triggered_by": triggered_by}
        if overlap:
            body["overlap"] = overlap
        body.update(_timing(run_at, delay_s))
        if priority is not None:
            body["priority"] = priority
        return cast(
            "list[dict[str, Any]]", (await self.request("POST", _job_path(job, "trigger"), json_body=body))["runs"]
        )

    async def trigger_batched(
        self,
        job: str,
        params: Sequence[Mapping[str, Any]],
        *,
        batch_size: int = 1000,
        triggered_by: str = "api",
        overlap: str | None = None,
        run_at: str | None = None,
        delay_s: float | None = None,
        priority: int | None = None,
    ) -> list[dict[str, Any]]:
        """One run per item of `params`, at most `batch_size` to a request, and never more than the server
        takes: a batch it refuses as too large is sent again in pieces of the size its answer names."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        runs: list[dict[str, Any]] = []
        start = 0
        while start < len(params):
            chunk = params[start : start + batch_size]
            try:
                runs += await self.trigger_many(
                    job,
                    chunk,
                    triggered_by=triggered_by,
                    overlap=overlap,
                    run_at=run_at,
                    delay_s=delay_s,
                    priority=priority,
                )
            except ApiError as exc:
                limit = exc.body.get("max_batch_runs")
                # The batch was refused whole, before any run of it was made: safe to send again.
                if exc.status != 400 or not isinstance(limit, int) or not 0 < limit < len(chunk):
                    raise
                batch_size = limit
                continue
            start += len(chunk)
        return runs

    async def pause(self, job: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("POST", _job_path(job, "pause")))["job"])

    async def resume(self, job: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("POST", _job_path(job, "resume")))["job"])

    # -- runs ------------------------------------------------------------------------------

    async def get_run(self, run_id: int) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("GET", f"/api/v1/runs/{run_id}"))["run"])

    async def runs(self, **filters: Any) -> dict[str, Any]:
        return cast("dict[str, Any]", await self.request("GET", "/api/v1/runs", params=filters))

    async def last_run(self, job: str) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("GET", "/api/v1/runs/last", params={"job": job}))["run"])

    async def log(self, run_id: int) -> str:
        return cast("str", await self.request("GET", f"/api/v1/runs/{run_id}/log"))

    async def cancel(self, run_id: int) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("POST", f"/api/v1/runs/{run_id}/cancel"))["run"])

    async def retry(self, run_id: int) -> dict[str, Any]:
        return cast("dict[str, Any]", (await self.request("POST", f"/api/v1/runs/{run_id}/retry"))["run"])

    async def queue(self) -> dict[str, Any]:
        return cast("dict[str, Any]", await self.request("GET", "/api/v1/queue"))

    # -- live status -----------------------------------------------------------------------

    async def watch(
        self, run_id: int, *, poll_interval: float = 1.0, max_backoff: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the run's `status_update`s as they happen, ending after its terminal status.

        Uses the run's event stream, reconnecting with Last-Event-ID and exponential backoff
        (across a daemon restart, too). When streaming is unavailable (404 or 503 on the stream,
        a proxy that answers something else or keeps cutting it) it polls GET /runs/{id} every
        `poll_interval` seconds instead. Raises ApiError for an unknown run or a refused token.
        """
        last_event_id: str | None = None
        last: dict[str, Any] | None = None
        failures = 0
        broken = 0
        polling = False
        while True:
            if polling:
                try:
                    update = status_update_of(await self.get_run(run_id))
                except ApiError as exc:
                    if exc.status < 500:
                        raise
                    update = None
                except (TimeoutError, aiohttp.ClientError, OSError):
                    update = None
                if update is None:
                    failures += 1
                    await asyncio.sleep(backoff_s(failures, max_backoff))
                    continue
                failures = 0
                if update != last:
                    last = update
                    yield update
                if update["status"] in TERMINAL_STATUSES:
                    return
                await asyncio.sleep(poll_interval)
                continue
            received = 0
            try:
                stream = self._event_stream(f"/api/v1/runs/{run_id}/events", last_event_id)
                async with contextlib.aclosing(stream):
                    async for event_id, data in stream:
                        received += 1
                        failures = broken = 0
                        if event_id is not None:
                            last_event_id = event_id
                        if data.get("type") == "status_update":
                            if data != last:
                                last = data
                                yield data
                            if data.get("status") in TERMINAL_STATUSES:
                                return
                        elif data.get("type") == "shutdown":
                            break
                if received == 0:
                    broken += 1
            except _StreamUnavailable as exc:
                if exc.finished:
                    polling = True  # 204: nothing after our last event; read the final state once
                    continue
                broken = BROKEN_STREAMS_BEFORE_POLLING if exc.fall_back else broken + 1
            except aiohttp.ClientConnectorError:
                pass  # nobody listening (a restart, say): back off and try again
            except (TimeoutError, aiohttp.ClientError, OSError):
                if received == 0:
                    broken += 1
            if broken >= BROKEN_STREAMS_BEFORE_POLLING:
                polling = True
                continue
            failures += 1
            await asyncio.sleep(backoff_s(failures, max_backoff))

    async def wait(self, run_id: int, *, poll_interval: float = 1.0, max_backoff: float = 30.0) -> dict[str, Any]:
        """Until the run has finished; returns the final run (as GET /runs/{id} shows it)."""
        async for _ in self.watch(run_id, poll_interval=poll_interval, max_backoff=max_backoff):
            pass
        return await self.get_run(run_id)

    async def _event_stream(
        self, path: str, last_event_id: str | None
    ) -> AsyncGenerator[tuple[str | None, dict[str, Any]], None]:
        """(id, data) of each message of one connection to an event stream."""
        headers = self.headers({"Accept": "text/event-stream"})
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=STREAM_IDLE_TIMEOUT_S)
        async with self.session.get(self.url + path, headers=headers, timeout=timeout) as response:
            if response.status == 204:
                raise _StreamUnavailable(finished=True)
            if response.status in (404, 503) or (
                response.status == 200 and response.content_type != "text/event-stream"
            ):
                raise _StreamUnavailable(fall_back=True)
            if response.status in (401, 403):
                raise _api_error(response.status, response.reason, await response.text())
            if response.status != 200:
                raise _StreamUnavailable()
            parser = SSEParser()
            async for chunk in response.content.iter_any():
                for event_id, data in parser.feed(chunk):
                    try:
                        message = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(message, dict):
                        yield event_id, message


def _timing(run_at: str | None, delay_s: float | None) -> dict[str, Any]:
    timing: dict[str, Any] = {}
    if run_at is not None:
        timing["run_at"] = run_at
    if delay_s is not None:
        timing["delay_s"] = delay_s
    return timing


def _job_path(name: str, action: str = "") -> str:
    """A job's URL path; the name is quoted, so whatever was typed stays one path segment."""
    path = f"/api/v1/jobs/{urllib.parse.quote(name, safe='')}"
    return f"{path}/{action}" if action else path


class _StreamUnavailable(Exception):
    def __init__(self, *, fall_back: bool = False, finished: bool = False) -> None:
        super().__init__("event stream unavailable")
        self.fall_back = fall_back
        self.finished = finished
