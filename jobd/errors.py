"""Domain errors. The web layer maps each to an RFC 9457 problem+json response in one place."""

from __future__ import annotations

from typing import Any


class JobdError(Exception):
    status = 500
    title = "Internal error"
    slug = "internal-error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's response."""
        return {}


class BadRequest(JobdError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthorized(JobdError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="jobd"'}  # RFC 6750: which credentials to send


class Forbidden(JobdError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(JobdError):
    status, title, slug = 404, "Not found", "not-found"


class JobNotFound(NotFound):
    slug = "job-not-found"

    def __init__(self, job: str) -> None:
        super().__init__(f"no job named {job!r}", job=job)


class RunNotFound(NotFound):
    slug = "run-not-found"

    def __init__(self, run_id: int) -> None:
        super().__init__(f"no run with id {run_id}", run_id=run_id)


class Conflict(JobdError):
    status, title, slug = 409, "Conflict", "conflict"


class OverlapConflict(Conflict):
    slug = "overlap"


class Unavailable(JobdError):
    status, title, slug = 503, "Service unavailable", "unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}
