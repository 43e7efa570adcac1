"""An asyncio client for jobd's HTTP API, usable from any asyncio program.

    async with JobdClient("http://127.0.0.1:8080", token="...") as client:
        run = await client.trigger("nightly", params={"day": "2026-11-23"})
        run = await client.get_run(run["id"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """jobd answered with a problem+json error."""

    def __init__(self, status: int, title: str, detail: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = dict(body or {})


class JobdClient:
    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout_s: float = 30.0,
                 session: aiohttp.ClientSession | None = None) -> None:
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

    async def request(self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        async with self.session.request(method, self.url + path, json=json_body, params=query,
                                        headers=self.headers(headers)) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    body = json.loads(text)
                except json.JSONDecodeError:
                    body = {}
                raise ApiError(response.status, body.get("title", response.reason or ""),
                               body.get("detail", text[:200]), body)
            if response.content_type == "application/json":
                return json.loads(text)
            return text

    # -- jobs ------------------------------------------------------------------------------

    async def jobs(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/v1/jobs"))["jobs"]

    async def job(self, name: str) -> dict[str, Any]:
        return (await self.request("GET", f"/api/v1/jobs/{name}"))["job"]

    async def trigger(self, job: str, params: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None,
                      overlap: str | None = None, triggered_by: str = "api") -> dict[str, Any]:
        body: dict[str, Any] = {"params": dict(params or {}), "triggered_by": triggered_by}
        if overlap:
            body["overlap"] = overlap
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return (await self.request("POST", f"/api/v1/jobs/{job}/trigger", json_body=body, headers=headers))["run"]

    async def trigger_many(self, job: str, params: Sequence[Mapping[str, Any]], *, triggered_by: str = "api",
                           overlap: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"runs": [{"params": dict(p)} for p in params], "triggered_by": triggered_by}
        if overlap:
            body["overlap"] = overlap
        return (await self.request("POST", f"/api/v1/jobs/{job}/trigger", json_body=body))["runs"]

    async def pause(self, job: str) -> dict[str, Any]:
        return (await self.request("POST", f"/api/v1/jobs/{job}/pause"))["job"]

    async def resume(self, job: str) -> dict[str, Any]:
        return (await self.request("POST", f"/api/v1/jobs/{job}/resume"))["job"]

    # -- runs ------------------------------------------------------------------------------

    async def get_run(self, run_id: int) -> dict[str, Any]:
        return (await self.request("GET", f"/api/v1/runs/{run_id}"))["run"]

    async def runs(self, **filters: Any) -> dict[str, Any]:
        return await self.request("GET", "/api/v1/runs", params=filters)

    async def last_run(self, job: str) -> dict[str, Any]:
        return (await self.request("GET", "/api/v1/runs/last", params={"job": job}))["run"]

    async def log(self, run_id: int) -> str:
        return await self.request("GET", f"/api/v1/runs/{run_id}/log")

    async def cancel(self, run_id: int) -> dict[str, Any]:
        return (await self.request("POST", f"/api/v1/runs/{run_id}/cancel"))["run"]

    async def retry(self, run_id: int) -> dict[str, Any]:
        return (await self.request("POST", f"/api/v1/runs/{run_id}/retry"))["run"]

    async def queue(self) -> dict[str, Any]:
        return await self.request("GET", "/api/v1/queue")
