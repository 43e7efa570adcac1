"""The run lifecycle: creating runs, admitting them under their job's overlap policy, queueing,
claiming, moving them through their states, retries, job state, and the read views.

`Runs` (service.py) is what the API, the CLI and the scheduler use; it speaks to a `RunBackend`
(backend.py), of which `LocalBackend` (local.py) is the single-process one.
"""

from __future__ import annotations

from jobd.lifecycle.backend import Feed, FinishedHook, RunBackend, Submission
from jobd.lifecycle.local import LocalBackend
from jobd.lifecycle.retry import INTERRUPTED, no_longer_configured
from jobd.lifecycle.service import Runs

__all__ = [
    "INTERRUPTED",
    "Feed",
    "FinishedHook",
    "LocalBackend",
    "RunBackend",
    "Runs",
    "Submission",
    "no_longer_configured",
]
